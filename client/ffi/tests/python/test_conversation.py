"""Two people, two devices, through the generated Python bindings over the local server:
a thread, real audio (uploaded, sent, played back and verified by SHA-256), live updates
through a listener, offline sends drained when the server returns, typed errors."""

import hashlib
import json
import os
import threading

import pytest

from audio_dedup_ffi import (
    AudioFormat, AudioSource, ClientError, ClientHandle, ClientOptions, ClientUpdate,
    OutgoingAudio, ProgressListener, SendState, SignOutReason, TokenError, TokenProvider,
    UpdateListener,
)
from conftest import TOKENS, run, wait_until


class Updates(UpdateListener):
    """Collects updates; called on the client's threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def on_update(self, update):
        with self.lock:
            self.items.append(update)

    def of(self, kind):
        with self.lock:
            return [u for u in self.items if isinstance(u, kind)]


class Progress(ProgressListener):
    def __init__(self):
        self.calls = []

    def on_progress(self, done, total):
        self.calls.append((done, total))


async def open_client(server, tmp_path, user, **kw):
    options = ClientOptions(base_url=server.url, data_dir=str(tmp_path / user),
                            token=TOKENS[user], **kw)
    return await ClientHandle.open(options)


def audio_file(path, size=300_000):
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_two_people_talk_through_the_bindings(server, tmp_path):
    async def story():
        alice = await open_client(server, tmp_path, "alice")
        bob = await open_client(server, tmp_path, "bob")
        heard = Updates()
        stream = bob.subscribe(heard)
        live = bob.go_live()
        # The state comes first.
        await wait_until(lambda: heard.of(ClientUpdate.STATE), 5, "bob's first state")
        assert isinstance(heard.items[0], ClientUpdate.STATE)

        thread = await alice.create_thread("Jam", ["bob"])
        assert sorted(thread.members) == ["alice", "bob"]

        song = tmp_path / "song.mp3"
        digest = audio_file(song)
        progress = Progress()
        uploaded = await alice.upload_audio(str(song), AudioFormat.MP3, progress)
        assert uploaded.content_hash == digest
        assert not uploaded.deduplicated and uploaded.bytes_sent == uploaded.size
        assert progress.calls[-1] == (uploaded.size, uploaded.size)
        # The same file again: the server has it, nothing is sent.
        again = await alice.start_upload(str(song), AudioFormat.MP3).join()
        assert again.deduplicated and again.bytes_sent == 0

        snapshot = {"text": "listen to this", "bpm": 120}
        sent = await alice.send_message(
            thread.id, json.dumps(snapshot),
            OutgoingAudio.UPLOADED(content_hash=digest, format=AudioFormat.MP3))
        assert sent.send_state == SendState.SENT and sent.audio_hash == digest

        # Bob's live channel brings it: an update through the listener, then the cache.
        await wait_until(
            lambda: any(u.thread_id == thread.id and u.added > 0
                        for u in heard.of(ClientUpdate.MESSAGES_SYNCED)),
            20, "bob's live update")
        got = bob.messages(thread.id)
        assert [m.id for m in got] == [sent.id] and got[0].author == "alice"
        assert json.loads(await bob.snapshot(sent.id)) == snapshot

        played = Progress()
        audio = await bob.play_message(thread.id, sent.id, played)
        assert audio.source() == AudioSource.DOWNLOAD
        assert sha256_of(audio.path()) == digest == audio.content_hash()
        assert played.calls[-1] == (uploaded.size, uploaded.size)
        cached = await bob.play_message(thread.id, sent.id)
        assert cached.source() == AudioSource.CACHE and cached.path() == audio.path()

        # Bob answers with a file of his own (queued upload first, then the message).
        reply_file = tmp_path / "reply.mp3"
        reply_digest = audio_file(reply_file, 120_000)
        reply = await bob.send_message(
            thread.id, json.dumps({"text": "nice"}),
            OutgoingAudio.FILE(path=str(reply_file), format=AudioFormat.MP3))
        assert reply.send_state == SendState.SENT
        await alice.sync_messages(thread.id)
        assert [m.id for m in alice.messages(thread.id)] == [sent.id, reply.id]
        download = alice.start_message_download(thread.id, reply.id)
        fetched = await download.join()
        assert sha256_of(fetched.path()) == reply_digest
        with pytest.raises(ClientError.WrongState):
            await download.join()

        stream.cancel()
        live.cancel()
        assert stream.is_finished()
        alice.shutdown()
        bob.shutdown()

    run(story())


def test_offline_sends_drain_when_the_server_returns(server, tmp_path):
    async def story():
        alice = await open_client(server, tmp_path, "alice")
        bob = await open_client(server, tmp_path, "bob")
        thread = await alice.create_thread("Offline", ["bob"])
        heard = Updates()
        stream = alice.subscribe(heard)

        server.stop()
        track = tmp_path / "take.mp3"
        digest = audio_file(track, 200_000)
        sent = []
        for i in range(3):
            audio = OutgoingAudio.FILE(path=str(track), format=AudioFormat.MP3) if i == 1 else None
            m = await alice.send_message(thread.id, json.dumps({"n": i}), audio)
            assert m.send_state == SendState.SENDING
            sent.append(m.id)
        assert alice.pending_count() >= 3
        await wait_until(lambda: any(not u.online for u in heard.of(ClientUpdate.CONNECTIVITY)),
                         10, "alice's offline update")
        assert [m.id for m in alice.messages(thread.id)] == sent

        server.start()
        alice.reconnect_now()
        await alice.process_queue()
        await wait_until(
            lambda: all(m.send_state == SendState.SENT for m in alice.messages(thread.id)),
            30, "alice's queue to drain")
        assert alice.pending_count() == 0

        await bob.sync_messages(thread.id)
        got = bob.messages(thread.id)
        assert [m.id for m in got] == sent
        audio = await bob.play_message(thread.id, sent[1])
        assert sha256_of(audio.path()) == digest

        stream.cancel()
        alice.shutdown()
        bob.shutdown()

    run(story())


class Provider(TokenProvider):
    def __init__(self, token):
        self.token_value = token
        self.asked = 0

    def token(self, refresh):
        self.asked += 1
        if self.token_value is None:
            raise TokenError.SignInRequired()
        return self.token_value


def test_errors_are_typed_and_tokens_come_from_the_app(server, tmp_path):
    async def story():
        provider = Provider(TOKENS["carol"])
        options = ClientOptions(base_url=server.url, data_dir=str(tmp_path / "carol"))
        carol = await ClientHandle.open(options, provider)
        thread = await carol.create_thread("Mine", [])
        assert provider.asked >= 1 and thread.created_by == "carol"

        # One client per folder.
        with pytest.raises(ClientError.FolderInUse):
            await ClientHandle.open(options, provider)
        # Input the app got wrong is refused before any request.
        with pytest.raises(ClientError.InvalidInput):
            carol.messages("not a thread id!")
        with pytest.raises(ClientError.InvalidInput):
            await carol.send_message(thread.id, "not json")
        # The server's refusal carries its code.
        with pytest.raises(ClientError.Rejected) as refused:
            await carol.sync_messages("no-such-thread")
        assert refused.value.status == 404
        assert refused.value.code.name == "THREAD_NOT_FOUND"

        # A provider that has no token: the client is signed out, typed; a send waits
        # (nothing fails) until the app pushes a token, then goes.
        phone = await ClientHandle.open(
            ClientOptions(base_url=server.url, data_dir=str(tmp_path / "carol-phone")),
            Provider(None))
        heard = Updates()
        stream = phone.subscribe(heard)
        with pytest.raises(ClientError.SignedOut) as signed_out:
            await phone.create_thread("x", [])
        assert signed_out.value.reason == SignOutReason.SIGN_IN_REQUIRED()
        waiting = await phone.send_message(thread.id, json.dumps({"from": "phone"}))
        assert waiting.send_state == SendState.SENDING
        await wait_until(lambda: heard.of(ClientUpdate.AUTH_REQUIRED), 10, "AuthRequired")
        assert phone.state().signed_out
        phone.set_token(TOKENS["carol"])
        await wait_until(
            lambda: [m.send_state for m in phone.messages(thread.id)] == [SendState.SENT],
            20, "the waiting send")
        await wait_until(lambda: heard.of(ClientUpdate.AUTH_RESTORED), 10, "AuthRestored")
        assert not any(isinstance(u, ClientUpdate.MESSAGE_CHANGED) and u.state == SendState.FAILED
                       for u in heard.items)
        stream.cancel()
        phone.shutdown()

        carol.shutdown()
        with pytest.raises(ClientError.Closed):
            carol.threads()
        # The folder is free again.
        reopened = await ClientHandle.open(options, provider)
        assert [t.id for t in reopened.threads()] == [thread.id]
        reopened.shutdown()

    run(story())


class CancelOnFirstProgress(ProgressListener):
    """Cancels its transfer from inside the first progress report (made before any byte)."""

    def __init__(self):
        self.handle = None
        self.ready = threading.Event()

    def on_progress(self, done, total):
        if self.ready.wait(5):
            self.handle.cancel()


def test_transfers_can_be_cancelled(server, tmp_path):
    async def story():
        alice = await open_client(server, tmp_path, "alice")
        bob = await open_client(server, tmp_path, "bob")
        thread = await alice.create_thread("Big", ["bob"])
        big = tmp_path / "big.mp3"
        digest = audio_file(big, 8_000_000)

        stopper = CancelOnFirstProgress()
        stopper.handle = alice.start_upload(str(big), AudioFormat.MP3, stopper)
        stopper.ready.set()
        with pytest.raises(ClientError.Cancelled):
            await stopper.handle.join()

        # Whole this time; then bob's download of it is cancelled.
        done = await alice.start_upload(str(big), AudioFormat.MP3).join()
        assert done.content_hash == digest and not done.deduplicated
        sent = await alice.send_message(
            thread.id, "{}", OutgoingAudio.UPLOADED(content_hash=digest, format=AudioFormat.MP3))
        await bob.sync_messages(thread.id)
        stopper = CancelOnFirstProgress()
        stopper.handle = bob.start_message_download(thread.id, sent.id, stopper)
        stopper.ready.set()
        with pytest.raises(ClientError.Cancelled):
            await stopper.handle.join()
        # Nothing half-downloaded is cached (a partial file stays for the next to resume).
        assert bob.cache_stats().audio_files == 0
        # And played whole afterwards.
        audio = await bob.play_message(thread.id, sent.id)
        assert sha256_of(audio.path()) == digest
        alice.shutdown()
        bob.shutdown()

    run(story())


def test_members_and_pages_through_the_bindings(server, tmp_path):
    """remove_member, and the paged reads (thread_list_page, messages_page) as the Rust API
    has them: newest first pages, an opaque `older` passed back as `before`."""
    async def story():
        alice = await open_client(server, tmp_path, "alice")
        bob = await open_client(server, tmp_path, "bob")
        carol = await open_client(server, tmp_path, "carol")
        jam = await alice.create_thread("Jam", ["bob", "carol"])
        for title in ("Two", "Three"):
            await alice.create_thread(title, ["bob"])
        for i in range(5):
            sent = await bob.send_message(jam.id, json.dumps({"take": i}), text=f"take {i}")
            assert sent.send_state == SendState.SENT

        # Carol only synced her feed: the list shows the server's count and preview.
        await carol.sync_threads()
        [entry] = carol.thread_list_page(10).threads
        assert entry.unread == 5 and entry.preview_text == "take 4"
        assert entry.preview_author == "bob"

        # Messages, three at a time from the thread's end, oldest first in each page.
        await carol.sync_messages(jam.id)
        page = carol.messages_page(jam.id, 3)
        assert [m.text for m in page.messages] == ["take 2", "take 3", "take 4"]
        rest = carol.messages_page(jam.id, 3, page.older)
        assert [m.text for m in rest.messages] == ["take 0", "take 1"]
        assert rest.older is None
        assert [m.id for m in rest.messages + page.messages] == \
            [m.id for m in carol.messages(jam.id)]
        with pytest.raises(ClientError.InvalidInput):
            carol.messages_page(jam.id, 3, "not a position")

        # The thread list, two at a time, newest activity first.
        await alice.sync_threads()
        first = alice.thread_list_page(2)
        assert [t.thread.title for t in first.threads] == ["Jam", "Three"]
        second = alice.thread_list_page(2, first.older)
        assert [t.thread.title for t in second.threads] == ["Two"]
        assert second.older is None
        with pytest.raises(ClientError.InvalidInput):
            alice.thread_list_page(2, "nowhere")

        # Only the creator removes others; the removed member's cache forgets the thread.
        with pytest.raises(ClientError.Rejected) as refused:
            await bob.remove_member(jam.id, "carol")
        assert refused.value.status == 403 and refused.value.code.name == "FORBIDDEN"
        await alice.remove_member(jam.id, "carol")
        await carol.sync_threads()
        assert [t.id for t in carol.threads()] == []
        assert carol.messages(jam.id) == []
        await alice.sync_messages(jam.id)
        assert sorted(next(t for t in alice.threads() if t.id == jam.id).members) == \
            ["alice", "bob"]

        for c in (alice, bob, carol):
            c.shutdown()

    run(story())
