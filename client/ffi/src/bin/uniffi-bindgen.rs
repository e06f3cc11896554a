//! `uniffi-bindgen generate --library <libaudio_dedup_ffi.so> --language <kotlin|swift|python>`:
//! uniffi's generator, built against the same uniffi version as the library.

fn main() {
    uniffi::uniffi_bindgen_main()
}
