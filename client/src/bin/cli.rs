//! `audio-dedup`: the offline-first client from a terminal. Every command works on the local
//! cache under `--data-dir`; what needs the server says so when it cannot reach it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use audio_dedup_client::{
    Attachment, AudioHandle, Client, ClientConfig, ClientError, FailureReason, LibraryAudio,
    QueuedOp, SendState, TokenFuture, TokenProvider, TokenUnavailable, Update,
};
use audio_dedup_core::{
    AudioFormat, AudioRender, ContentHash, LibraryItemId, MessageId, ThreadId, UserId,
};
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
    /// Bearer token (this or --token-command is required).
    #[arg(long, global = true, env = "AUDIO_DEDUP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A shell command that prints a fresh token on stdout, run whenever one is needed (at
    /// start, and when the server refuses the last one), as git's credential helpers are.
    #[arg(long, global = true, env = "AUDIO_DEDUP_TOKEN_COMMAND")]
    token_command: Option<String>,
    /// Where the cache lives (cache.sqlite and audio/).
    #[arg(long, global = true, env = "AUDIO_DEDUP_CLIENT_DIR", default_value = DIR)]
    data_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upload an audio file (hashed first; nothing is sent if the server has it) and keep it
    /// in your library.
    Upload {
        /// The audio file.
        file: PathBuf,
        /// mp3, wav, m4a, ogg, opus or flac; inferred from the extension if omitted.
        #[arg(long)]
        format: Option<AudioFormat>,
        /// The library item's title (default: the file's name).
        #[arg(long)]
        title: Option<String>,
        /// Upload only: no library item. Audio nothing references is deleted after the
        /// server's grace period.
        #[arg(long)]
        no_library: bool,
    },
    /// Fetch audio into the cache (or find it there) and print its path: by hash (audio you
    /// hold) or by message (audio posted in a thread you are in).
    Download {
        /// The content's SHA-256 (64 hex digits).
        #[arg(required_unless_present = "message", conflicts_with = "message")]
        hash: Option<ContentHash>,
        /// A message whose audio to fetch.
        #[arg(long)]
        message: Option<MessageId>,
        /// The message's thread (found in the cache if omitted).
        #[arg(long, requires = "message")]
        thread: Option<ThreadId>,
        #[arg(long, default_value = "mp3")]
        format: AudioFormat,
        /// Also copy it here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Fetch a message's audio into the cache and print the path to play.
    Play {
        message: MessageId,
        /// The message's thread (found in the cache if omitted).
        #[arg(long)]
        thread: Option<ThreadId>,
    },
    /// Server deduplication stats and local cache stats.
    Stats,
    /// Cached threads, then a sync; or `threads create`.
    Threads {
        #[command(subcommand)]
        cmd: Option<ThreadsCmd>,
    },
    /// A thread's cached messages, then a sync.
    Messages {
        /// The thread's id.
        thread: ThreadId,
    },
    /// Print messages as they arrive (live updates), in one thread or in all of yours.
    /// Runs until interrupted.
    Watch {
        /// Only this thread.
        thread: Option<ThreadId>,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        for_secs: Option<u64>,
    },
    /// Send a message (queued if offline).
    Send(SendArgs),
    /// Print a message's snapshot (the cache first, else fetched and checked).
    Snapshot {
        /// The message's id.
        message: MessageId,
    },
    /// Delete one of your messages (queued if offline).
    Delete {
        thread: ThreadId,
        message: MessageId,
    },
    /// Your library (queued if offline).
    Library {
        #[command(subcommand)]
        cmd: LibraryCmd,
    },
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

#[derive(Subcommand)]
enum ThreadsCmd {
    /// Create a thread (online) and print its id.
    Create {
        #[arg(long)]
        title: String,
        /// A member besides you (repeat for more).
        #[arg(long = "member")]
        members: Vec<String>,
        /// The thread's id (the server picks one if omitted).
        #[arg(long)]
        id: Option<ThreadId>,
    },
    /// Add a member (online; any member may). They see the thread's whole history.
    AddMember { thread: ThreadId, user: UserId },
    /// Remove a member (online; the thread's creator only).
    RemoveMember { thread: ThreadId, user: UserId },
    /// Leave a thread (online): this cache forgets it, its messages and snapshots.
    Leave { thread: ThreadId },
    /// Mark a thread read (up to its newest cached message, or `--cursor`); queued offline.
    Read {
        thread: ThreadId,
        #[arg(long)]
        cursor: Option<u64>,
    },
    /// Sync, then list threads by last activity with unread counts and previews.
    List,
}

#[derive(Subcommand)]
enum LibraryCmd {
    /// Add a local audio file (uploaded first) and print the item's id.
    Add {
        file: PathBuf,
        #[arg(long)]
        title: String,
        #[arg(long)]
        format: Option<AudioFormat>,
        /// The item's id (a new one if omitted).
        #[arg(long)]
        id: Option<LibraryItemId>,
    },
    /// Save the audio of a message (someone else's track) and print the item's id.
    Save {
        message: MessageId,
        #[arg(long)]
        title: String,
        #[arg(long)]
        id: Option<LibraryItemId>,
    },
    /// Cached items, then a sync.
    List,
    /// Remove an item.
    Rm { id: LibraryItemId },
    /// Fetch an item's audio into the cache and print the path to play.
    Play { id: LibraryItemId },
}

#[derive(Args)]
struct SendArgs {
    /// The thread's id.
    thread: ThreadId,
    /// A JSON file: the message's snapshot (`{}` when only `--text` is given).
    #[arg(long, required_unless_present = "text")]
    snapshot: Option<PathBuf>,
    /// The message's plain text (at most 2,000 characters).
    #[arg(long)]
    text: Option<String>,
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
    /// Send every pending operation now (skipping the backoff; an explicit Retry-After is
    /// still honoured).
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
            ClientError::InvalidInput(format!("cannot tell the format of {p}; pass --format"))
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

/// The thread list: newest activity first, each with its unread count and a preview of its
/// newest message (read from the cache in pages of 500).
fn print_threads(client: &Client) -> Res {
    let mut all = Vec::new();
    let mut before = None;
    for _ in 0..10_000 {
        let page = client.thread_list(before.as_ref(), 500)?;
        all.extend(page.threads);
        match page.older {
            Some(p) => before = Some(p),
            None => break,
        }
    }
    out!("{} threads", all.len());
    for s in all {
        let t = s.thread;
        let (id, title, by) = (t.id, t.title, t.created_by);
        let members: Vec<String> = t.members.iter().map(|m| m.to_string()).collect();
        let preview = match s.preview {
            Some(p) => {
                let who = p.author.as_deref().unwrap_or("me");
                let text = opt(p.text.as_ref(), |t| format!(" {t:?}"));
                let audio = if p.has_audio { " [audio]" } else { "" };
                format!("  last {}: {who}{text}{audio}", time(s.last_activity_at))
            }
            None => String::new(),
        };
        out!(
            "  {id}  {title:?}  by {by}  members [{}]  unread {}{preview}",
            members.join(", "),
            s.unread
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
        let audio = match m.audio {
            Some(a) => {
                let cached = client.is_audio_cached(&a.content_hash)?;
                let where_ = if cached { "cached" } else { "not cached" };
                format!("  audio {} {} ({where_})", a.content_hash, a.format)
            }
            None => String::new(),
        };
        let err = opt(m.error.as_ref(), |e| format!("  ({e})"));
        let text = opt(m.text.as_ref(), |t| format!("  {t:?}"));
        out!("  {cursor:>6}  {id}  by {author}  {at}  {st}{text}{snap}{audio}{err}");
    }
    Ok(())
}

/// Prints each message of the watched threads once, as live updates bring them.
async fn watch(client: &Client, only: Option<&ThreadId>, limit: Option<Duration>) -> Res {
    let mut updates = client.subscribe();
    let _live = client.go_live();
    let what = only.map_or_else(|| "all your threads".to_owned(), |t| format!("thread {t}"));
    out!("watching {what} (Ctrl-C to stop)");
    let mut seen = std::collections::HashSet::new();
    let show = |thread: &ThreadId, seen: &mut std::collections::HashSet<String>| -> Res {
        for m in client.messages(thread)? {
            if m.cursor.is_some() && seen.insert(m.id.to_string()) {
                let author = m.author.as_deref().unwrap_or("me");
                let snap = opt(m.snapshot, |s| format!("  snapshot {} B", s.size));
                out!(
                    "{thread}  {}  by {author}  {}{snap}",
                    m.id,
                    time(m.created_at)
                );
            }
        }
        Ok(())
    };
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, updates.recv()).await.ok(),
                None => Some(updates.recv().await),
            }
        };
        let update = tokio::select! {
            u = next => match u {
                Some(u) => u,
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match update {
            Ok(Update::MessagesSynced { thread_id, .. })
                if only.is_none_or(|t| *t == thread_id) =>
            {
                show(&thread_id, &mut seen)?
            }
            Ok(_) => {}
            // Fell behind the update stream: show every watched thread again (once each).
            Err(_) => {
                for t in client.cached_threads()? {
                    if only.is_none_or(|o| *o == t.id) {
                        show(&t.id, &mut seen)?;
                    }
                }
            }
        }
    }
}

fn print_library(client: &Client) -> Res {
    let items = client.library()?;
    out!("{} library items", items.len());
    for i in items {
        let title = i.title.unwrap_or_default();
        let hash = opt(i.content_hash, |h| h.to_string());
        let err = opt(i.error.as_ref(), |e| format!("  ({e})"));
        out!(
            "  {}  {title:?}  {hash}  {}{err}",
            i.id,
            state(i.send_state)
        );
    }
    Ok(())
}

fn new_item_id() -> Result<LibraryItemId, ClientError> {
    uuid::Uuid::now_v7()
        .to_string()
        .parse()
        .map_err(|e| ClientError::InvalidInput(format!("{e}")))
}

/// Exit 1 when the queue refused the item for good.
fn check_item(state: SendState, error: Option<FailureReason>, what: &str) -> Res {
    if state == SendState::Failed {
        let why = error.map(|e| e.to_string()).unwrap_or_default();
        return Err(ClientError::InvalidInput(format!("{what} failed: {why}")));
    }
    Ok(())
}

/// The thread a message is in: given, or from the cache.
fn thread_of(
    client: &Client,
    message: &MessageId,
    given: Option<ThreadId>,
) -> Result<ThreadId, ClientError> {
    match given {
        Some(t) => Ok(t),
        None => client.message_thread(message)?.ok_or_else(|| {
            ClientError::NotFound(format!(
                "message {message} is not in the cache; sync its thread (`messages THREAD`) or pass --thread"
            ))
        }),
    }
}

async fn fetch_message_audio(
    client: &Client,
    message: &MessageId,
    thread: Option<ThreadId>,
) -> Result<AudioHandle, ClientError> {
    let thread = thread_of(client, message, thread)?;
    let pb = bar();
    let cb = progress(&pb);
    let handle = client.message_audio(&thread, message, Some(&cb)).await;
    pb.finish_and_clear();
    handle
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

/// `--token-command`: runs the command with `sh -c` and takes the first line of its stdout.
struct TokenCommand(String);

/// A token command that hangs is stopped after this long.
const TOKEN_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl TokenProvider for TokenCommand {
    fn token(&self, _refresh: bool) -> TokenFuture<'_> {
        Box::pin(async move {
            let run = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&self.0)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .output();
            let out = match tokio::time::timeout(TOKEN_COMMAND_TIMEOUT, run).await {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => return Err(TokenUnavailable::Temporarily(e.to_string())),
                Err(_) => {
                    return Err(TokenUnavailable::Temporarily(
                        "token command timed out".into(),
                    ))
                }
            };
            let token = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            match (out.status.success(), token.is_empty()) {
                (true, false) => Ok(token),
                _ => Err(TokenUnavailable::SignInRequired),
            }
        })
    }
}

async fn run(cli: Cli) -> Res {
    let mut cfg = match (cli.token_command.filter(|c| !c.is_empty()), cli.token) {
        (Some(command), _) => ClientConfig::new(&cli.server, "", &cli.data_dir)
            .with_token_provider(Arc::new(TokenCommand(command))),
        (None, Some(token)) if !token.is_empty() => {
            ClientConfig::new(&cli.server, token, &cli.data_dir)
        }
        _ => {
            return Err(ClientError::InvalidInput(
                "a token is required (--token, AUDIO_DEDUP_TOKEN or --token-command)".into(),
            ))
        }
    };
    // One-shot commands: each sends what it queued itself; `queue process` sends the rest.
    cfg.background_sender = false;
    let client = Client::open(cfg)?;
    if let Some((path, n)) = client.recovered() {
        let p = path.display();
        eprintln!("warning: cache unreadable; moved to {p} ({n} queued operations kept)");
    }
    match cli.cmd {
        Cmd::Upload {
            file,
            format,
            title,
            no_library,
        } => {
            let (format, pb) = (format_of(&file, format)?, bar());
            let cb = progress(&pb);
            let up = client.upload_audio(&file, format, Some(&cb)).await;
            pb.finish_and_clear();
            let up = up?;
            out!("{}", up.content_hash);
            if up.resumed_from > 0 {
                out!(
                    "resumed from {} B of {} B (already on the server)",
                    up.resumed_from,
                    up.size
                );
            }
            match up.deduplicated {
                true => out!("deduplicated: the server had it ({} B sent)", up.bytes_sent),
                false => out!("uploaded {} B", up.bytes_sent),
            }
            if no_library {
                out!("not kept: this upload holds no reference; if nothing else references the audio, the server deletes it after its grace period");
            } else {
                let title = match title {
                    Some(t) => t,
                    None => file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| up.content_hash.to_string()),
                };
                let render = AudioRender {
                    content_hash: up.content_hash,
                    format,
                };
                let id = new_item_id()?;
                let item = client
                    .put_library_item(&id, LibraryAudio::Uploaded(render), &title)
                    .await?;
                out!(
                    "library item {} {:?} {}",
                    item.id,
                    title,
                    state(item.send_state)
                );
                check_item(item.send_state, item.error, "the library item")?;
            }
        }
        Cmd::Download {
            hash,
            message,
            thread,
            format,
            out,
        } => {
            let handle = match (message, hash) {
                (Some(m), _) => fetch_message_audio(&client, &m, thread).await?,
                (None, Some(hash)) => {
                    let pb = bar();
                    let render = AudioRender {
                        content_hash: hash,
                        format,
                    };
                    let cb = progress(&pb);
                    let handle = client.playable_path(&render, None, Some(&cb)).await;
                    pb.finish_and_clear();
                    handle?
                }
                (None, None) => {
                    return Err(ClientError::InvalidInput("name a hash or --message".into()))
                }
            };
            let shown = match out {
                Some(out) => std::fs::copy(handle.path(), &out).map(|_| out)?,
                None => handle.path().to_owned(),
            };
            out!("{}", shown.display());
        }
        Cmd::Play { message, thread } => {
            let handle = fetch_message_audio(&client, &message, thread).await?;
            out!("{}", handle.path().display());
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
                    ("unreferenced files", s.unreferenced_files.to_string()),
                    ("unreferenced bytes", s.unreferenced_bytes.to_string()),
                ];
                let admin_only = [
                    ("pending uploads", s.pending_uploads),
                    ("deleting", s.deleting),
                ];
                // An admin's view also has the operator's counters.
                let rows: Vec<_> = rows
                    .into_iter()
                    .chain(
                        admin_only
                            .into_iter()
                            .filter_map(|(k, v)| v.map(|v| (k, v.to_string()))),
                    )
                    .collect();
                table(format!("server {}", client.config().base_url), &rows);
            }
        }
        Cmd::Threads {
            cmd: Some(ThreadsCmd::Create { title, members, id }),
        } => {
            let t = client.create_thread(id.as_ref(), &title, &members).await?;
            out!("{}", t.id);
        }
        Cmd::Threads {
            cmd: Some(ThreadsCmd::AddMember { thread, user }),
        } => {
            let t = client.add_member(&thread, &user).await?;
            let members: Vec<String> = t.members.iter().map(|m| m.to_string()).collect();
            out!("{thread}: members [{}]", members.join(", "));
        }
        Cmd::Threads {
            cmd: Some(ThreadsCmd::RemoveMember { thread, user }),
        } => {
            client.remove_member(&thread, &user).await?;
            out!("{thread}: removed {user}");
        }
        Cmd::Threads {
            cmd: Some(ThreadsCmd::Leave { thread }),
        } => {
            client.leave_thread(&thread).await?;
            out!("{thread}: left");
        }
        Cmd::Threads {
            cmd: Some(ThreadsCmd::Read { thread, cursor }),
        } => {
            client.mark_read(&thread, cursor).await?;
            let queued = client.queue()?.iter().any(
                |e| matches!(&e.op, QueuedOp::MarkRead { thread_id, .. } if *thread_id == thread),
            );
            out!("{thread}: read{}", if queued { " (queued)" } else { "" });
        }
        Cmd::Threads {
            cmd: Some(ThreadsCmd::List),
        } => {
            if soft(client.sync_threads().await)?.is_some() {
                for s in client.thread_list(None, 10_000)?.threads {
                    let _ = soft(client.sync_messages(&s.thread.id).await)?;
                }
            }
            print_threads(&client)?;
        }
        Cmd::Threads { cmd: None } => {
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
        Cmd::Watch { thread, for_secs } => {
            let limit = for_secs.map(Duration::from_secs);
            watch(&client, thread.as_ref(), limit).await?;
        }
        Cmd::Send(a) => {
            let json: serde_json::Value = match &a.snapshot {
                Some(path) => serde_json::from_slice(&std::fs::read(path)?)?,
                None => serde_json::json!({}),
            };
            let attachment = match a.audio {
                Some(path) => Some(Attachment::File {
                    format: format_of(&path, a.format)?,
                    path,
                }),
                None => None,
            };
            let m = client
                .send_message_with_text(&a.thread, &json, a.text.as_deref(), attachment)
                .await?;
            out!("{} {}", m.id, state(m.send_state));
            if m.send_state == SendState::Failed {
                let why = match &m.error {
                    Some(e) => format!("message {} failed: {e}", m.id),
                    None => format!("message {} failed", m.id),
                };
                return Err(ClientError::InvalidInput(why));
            }
        }
        Cmd::Snapshot { message } => {
            let json = client.snapshot(&message).await?;
            out!("{}", String::from_utf8_lossy(&json));
        }
        Cmd::Delete { thread, message } => {
            client.delete_message(&thread, &message).await?;
            let queued = client.queue()?.iter().any(|e| {
                matches!(&e.op, QueuedOp::DeleteMessage { message_id, .. } if *message_id == message)
            });
            out!(
                "{message} {}",
                if queued {
                    "deleting (queued)"
                } else {
                    "deleted"
                }
            );
        }
        Cmd::Library { cmd } => match cmd {
            LibraryCmd::Add {
                file,
                title,
                format,
                id,
            } => {
                let format = format_of(&file, format)?;
                let id = id.map_or_else(new_item_id, Ok)?;
                let audio = LibraryAudio::File { path: file, format };
                let item = client.put_library_item(&id, audio, &title).await?;
                out!("{} {}", item.id, state(item.send_state));
                check_item(item.send_state, item.error, "the library item")?;
            }
            LibraryCmd::Save { message, title, id } => {
                let id = id.map_or_else(new_item_id, Ok)?;
                let audio = LibraryAudio::FromMessage(message);
                let item = client.put_library_item(&id, audio, &title).await?;
                out!("{} {}", item.id, state(item.send_state));
                check_item(item.send_state, item.error, "the library item")?;
            }
            LibraryCmd::List => {
                print_library(&client)?;
                if let Some(r) = soft(client.sync_library().await)? {
                    if r.new + r.deleted > 0 {
                        out!("synced: {} changed, {} deleted", r.new, r.deleted);
                        print_library(&client)?;
                    }
                }
            }
            LibraryCmd::Rm { id } => {
                if client.library_item(&id)?.is_none() {
                    // Not cached yet: learn of it first.
                    soft(client.sync_library().await)?;
                }
                client.delete_library_item(&id).await?;
                let queued = client.queue()?.iter().any(
                    |e| matches!(&e.op, QueuedOp::DeleteLibraryItem { item_id } if *item_id == id),
                );
                out!(
                    "{id} {}",
                    if queued {
                        "removing (queued)"
                    } else {
                        "removed"
                    }
                );
            }
            LibraryCmd::Play { id } => {
                if client.library_item(&id)?.is_none() {
                    soft(client.sync_library().await)?;
                }
                let pb = bar();
                let cb = progress(&pb);
                let handle = client.library_audio(&id, Some(&cb)).await;
                pb.finish_and_clear();
                out!("{}", handle?.path().display());
            }
        },
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
            client.clear_all().await?;
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
