//! `audio-dedup`: the offline-first client from a terminal. Every command works on the local
//! cache under `--data-dir`; what needs the server says so when it cannot reach it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use audio_dedup_client::{Attachment, Client, ClientConfig, ClientError, SendState};
use audio_dedup_core::{AudioFormat, AudioRender, ContentHash, ThreadId};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

const URL: &str = "http://127.0.0.1:3000";
const DIR: &str = "./client-data";

#[derive(Parser)]
#[command(
    name = "audio-dedup",
    version,
    about = "Offline-first client for audio-dedup"
)]
struct Cli {
    /// The API's base URL.
    #[arg(long, global = true, env = "AUDIO_DEDUP_URL", default_value = URL)]
    server: String,
    /// Bearer token (required).
    #[arg(long, global = true, env = "AUDIO_DEDUP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the cache lives (cache.sqlite and audio/).
    #[arg(long, global = true, env = "AUDIO_DEDUP_CLIENT_DIR", default_value = DIR)]
    data_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upload an audio file (hashed first; nothing is sent if the server has it).
    Upload {
        /// The audio file.
        file: PathBuf,
        /// mp3, wav, m4a, ogg, opus or flac; inferred from the extension if omitted.
        #[arg(long)]
        format: Option<AudioFormat>,
    },
    /// Fetch audio into the cache (or find it there) and print its path.
    Download {
        /// The content's SHA-256 (64 hex digits).
        hash: ContentHash,
        #[arg(long, default_value = "mp3")]
        format: AudioFormat,
        /// Also copy it here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Server deduplication stats and local cache stats.
    Stats,
    /// Cached threads, then a sync.
    Threads,
    /// A thread's cached messages, then a sync.
    Messages {
        /// The thread's id.
        thread: ThreadId,
    },
    /// Send a message (queued if offline).
    Send(SendArgs),
    /// The offline queue.
    Queue {
        #[command(subcommand)]
        cmd: QueueCmd,
    },
    /// The local cache.
    Cache {
        #[command(subcommand)]
        cmd: CacheCmd,
    },
}

#[derive(Args)]
struct SendArgs {
    /// The thread's id.
    thread: ThreadId,
    /// A JSON file: the message's snapshot.
    #[arg(long)]
    snapshot: PathBuf,
    /// An audio file to attach (uploaded before the message).
    #[arg(long)]
    audio: Option<PathBuf>,
    /// The audio's format; inferred from the extension if omitted.
    #[arg(long)]
    format: Option<AudioFormat>,
}

#[derive(Subcommand)]
enum QueueCmd {
    /// List queued operations.
    List,
    /// Send what is due now.
    Process,
    /// Drop every queued operation (and roll back its local effect).
    Clear,
}

#[derive(Subcommand)]
enum CacheCmd {
    Stats,
    /// Remove every cache and the queue (logout).
    Clear,
}

type Res = Result<(), ClientError>;

/// `println!` that ignores a closed stdout (`| head`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

fn format_of(path: &Path, given: Option<AudioFormat>) -> Result<AudioFormat, ClientError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    given
        .or_else(|| ext.to_ascii_lowercase().parse().ok())
        .ok_or_else(|| {
            let p = path.display();
            ClientError::Invalid(format!("cannot tell the format of {p}; pass --format"))
        })
}

fn time(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or(String::new(), f)
}

fn table(title: String, rows: &[(&str, String)]) {
    out!("{title}");
    for (k, v) in rows {
        out!("  {k:<22} {v}");
    }
}

/// A sync that could not reach the server leaves the cached answer standing (a warning);
/// a refusal (unknown thread, bad token) is an error.
fn soft<T>(r: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Api(e)) if e.is_retryable() => {
            eprintln!("warning: could not sync ({e}); showing the cache");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn print_threads(client: &Client) -> Res {
    let threads = client.cached_threads()?;
    out!("{} threads", threads.len());
    for t in threads {
        let (id, title, by) = (t.id, t.title, t.created_by);
        let members: Vec<String> = t.members.iter().map(|m| m.to_string()).collect();
        out!(
            "  {id}  {title:?}  by {by}  members [{}]",
            members.join(", ")
        );
    }
    Ok(())
}

fn print_messages(client: &Client, thread: &ThreadId) -> Res {
    let msgs = client.messages(thread)?;
    out!("{} messages in {thread}", msgs.len());
    for m in msgs {
        let cursor = opt(m.cursor, |c| c.to_string());
        let author = m.author.as_deref().unwrap_or("me");
        let (id, at, st) = (&m.id, time(m.created_at), state(m.send_state));
        let snap = opt(m.snapshot, |s| format!("  snapshot {} B", s.size));
        let audio = opt(m.audio, |a| format!("  audio {}", a.content_hash));
        let err = opt(m.error.as_ref(), |e| format!("  ({e})"));
        out!("  {cursor:>6}  {id}  {author}  {at}  {st}{snap}{audio}{err}");
    }
    Ok(())
}

fn print_cache_stats(client: &Client) -> Res {
    let s = client.cache_stats()?;
    let mut rows = vec![
        ("threads", s.threads.to_string()),
        ("messages", s.messages.to_string()),
        ("unsent messages", s.unsent_messages.to_string()),
        (
            "snapshots",
            format!("{} ({} B)", s.snapshots, s.snapshot_bytes),
        ),
        (
            "audio files",
            format!("{} ({} B)", s.audio_files, s.audio_bytes),
        ),
        ("pending operations", s.pending_operations.to_string()),
        ("failed operations", s.failed_operations.to_string()),
        ("database", format!("{} B", s.database_bytes)),
    ];
    for (scope, at) in &s.last_syncs {
        rows.push(("last sync", format!("{scope}: {}", time(*at))));
    }
    table(
        format!("cache {}", client.config().data_dir.display()),
        &rows,
    );
    Ok(())
}

fn bar() -> ProgressBar {
    let pb = ProgressBar::new(0);
    let template = "{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb
}

fn progress(pb: &ProgressBar) -> impl Fn(u64, u64) + Send + Sync + '_ {
    move |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    }
}

fn state(s: SendState) -> String {
    format!("{s:?}").to_lowercase()
}

async fn run(cli: Cli) -> Res {
    let token = cli.token.filter(|t| !t.is_empty()).ok_or_else(|| {
        ClientError::Invalid("a token is required (--token or AUDIO_DEDUP_TOKEN)".into())
    })?;
    let client = Client::open(ClientConfig::new(&cli.server, token, &cli.data_dir))?;
    if let Some((path, n)) = client.recovered() {
        let p = path.display();
        eprintln!("warning: cache unreadable; moved to {p} ({n} queued operations kept)");
    }
    match cli.cmd {
        Cmd::Upload { file, format } => {
            let (format, pb) = (format_of(&file, format)?, bar());
            let cb = progress(&pb);
            let up = client.upload_audio(&file, format, Some(&cb)).await;
            pb.finish_and_clear();
            let up = up?;
            out!("{}", up.content_hash);
            match up.deduplicated {
                true => out!("deduplicated: the server had it ({} B sent)", up.bytes_sent),
                false => out!("uploaded {} B", up.bytes_sent),
            }
        }
        Cmd::Download { hash, format, out } => {
            let pb = bar();
            let render = AudioRender {
                content_hash: hash,
                format,
            };
            let cb = progress(&pb);
            let handle = client.playable_path(&render, None, Some(&cb)).await;
            pb.finish_and_clear();
            let handle = handle?;
            let shown = match out {
                Some(out) => std::fs::copy(handle.path(), &out).map(|_| out)?,
                None => handle.path().to_owned(),
            };
            out!("{}", shown.display());
        }
        Cmd::Stats => {
            print_cache_stats(&client)?;
            if let Some(s) = soft(client.api().stats().await.map_err(ClientError::from))? {
                let rows = [
                    ("unique files", s.unique_files.to_string()),
                    ("stored bytes", s.stored_bytes.to_string()),
                    ("references", s.total_references.to_string()),
                    ("referenced bytes", s.referenced_bytes.to_string()),
                    ("dedup ratio", format!("{:.2}", s.deduplication_ratio)),
                    ("bytes saved", s.bytes_saved.to_string()),
                    ("pending uploads", s.pending_uploads.to_string()),
                    ("deleting", s.deleting.to_string()),
                ];
                table(format!("server {}", client.config().base_url), &rows);
            }
        }
        Cmd::Threads => {
            print_threads(&client)?;
            if let Some(n @ 1..) = soft(client.sync_threads().await)? {
                out!("synced: {n} changed");
                print_threads(&client)?;
            }
        }
        Cmd::Messages { thread } => {
            print_messages(&client, &thread)?;
            if let Some(r) = soft(client.sync_messages(&thread).await)? {
                if r.new + r.deleted > 0 {
                    out!("synced: {} new, {} deleted", r.new, r.deleted);
                    print_messages(&client, &thread)?;
                }
            }
        }
        Cmd::Send(a) => {
            let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&a.snapshot)?)?;
            let attachment = match a.audio {
                Some(path) => Some(Attachment::File {
                    format: format_of(&path, a.format)?,
                    path,
                }),
                None => None,
            };
            let m = client.send_message(&a.thread, &json, attachment).await?;
            out!("{} {}", m.id, state(m.send_state));
            if m.send_state == SendState::Failed {
                let why = format!("message {} failed: {}", m.id, m.error.unwrap_or_default());
                return Err(ClientError::Invalid(why));
            }
        }
        Cmd::Queue { cmd } => match cmd {
            QueueCmd::List => {
                let entries = client.queue()?;
                out!("{} queued operations", entries.len());
                for e in entries {
                    let st = format!("{:?}", e.state).to_lowercase();
                    let (id, lane, attempts, due) =
                        (e.id, &e.lane, e.attempts, time(e.next_due_ms));
                    let op = serde_json::to_string(&e.op)?;
                    let dep = opt(e.depends_on, |d| format!(" after #{d}"));
                    let err = opt(e.last_error, |x| format!("  ({x})"));
                    out!("  #{id} {st} [{lane}] attempts {attempts} due {due}{dep} {op}{err}");
                }
            }
            QueueCmd::Process => {
                let r = client.process_queue().await?;
                let (sent, failed, waiting) = (r.sent, r.failed, r.waiting);
                out!("sent {sent}, failed {failed}, waiting {waiting}");
            }
            QueueCmd::Clear => out!("removed {} queued operations", client.clear_queue()?),
        },
        Cmd::Cache {
            cmd: CacheCmd::Stats,
        } => print_cache_stats(&client)?,
        Cmd::Cache {
            cmd: CacheCmd::Clear,
        } => {
            client.clear_all()?;
            out!("cleared every cache and the queue");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // --help and --version print to stdout and are not errors.
            return ExitCode::from(u8::from(e.use_stderr()));
        }
    };
    let res = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(e.into()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
