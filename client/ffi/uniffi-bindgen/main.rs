//! `uniffi-bindgen generate <libaudio_dedup_ffi.so> --language <kotlin|swift|python>`:
//! uniffi's generator (library mode), the same uniffi version as the library's.

fn main() {
    uniffi::uniffi_bindgen_main()
}
