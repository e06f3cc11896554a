// The JVM test of the generated Kotlin bindings (scripts/bindings-test): against the local
// server, alice opens a client, creates a thread with bob, uploads a file and sends it in a
// message, and reads it back; bob syncs and plays it (SHA-256 checked); errors are typed.
// Exits non-zero on any failure; the whole run is bounded (60 s).

import audio_dedup.*
import java.io.File
import java.security.MessageDigest
import java.util.concurrent.ConcurrentLinkedQueue
import kotlin.random.Random
import kotlin.system.exitProcess
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout

fun sha256(bytes: ByteArray): String =
    MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }

class Heard : UpdateListener {
    val updates = ConcurrentLinkedQueue<ClientUpdate>()
    override fun onUpdate(update: ClientUpdate) {
        updates.add(update)
    }
}

suspend fun story(url: String, aliceToken: String, bobToken: String, dir: File) {
    ClientHandle.open(ClientOptions(baseUrl = url, dataDir = File(dir, "alice").path, token = aliceToken)).use { alice ->
        ClientHandle.open(ClientOptions(baseUrl = url, dataDir = File(dir, "bob").path, token = bobToken)).use { bob ->
            val heard = Heard()
            alice.subscribe(heard).use {
                val thread = alice.createThread("Kotlin jam", listOf("bob"))
                check(thread.members.sorted() == listOf("alice", "bob")) { "members: ${thread.members}" }

                val song = File(dir, "song.mp3")
                val bytes = Random.nextBytes(150_000)
                song.writeBytes(bytes)
                val uploaded = alice.uploadAudio(song.path, AudioFormat.MP3)
                check(uploaded.contentHash == sha256(bytes)) { "hash ${uploaded.contentHash}" }

                val sent = alice.sendMessage(
                    thread.id,
                    """{"text":"from Kotlin"}""",
                    OutgoingAudio.Uploaded(uploaded.contentHash, AudioFormat.MP3),
                )
                check(sent.sendState == SendState.SENT) { "state ${sent.sendState}" }
                val mine = alice.messages(thread.id)
                check(mine.map { it.id } == listOf(sent.id)) { "alice reads ${mine.map { it.id }}" }
                check(alice.snapshot(sent.id) == """{"text":"from Kotlin"}""")

                // The listener heard the state first, then the message's changes.
                val deadline = System.currentTimeMillis() + 5_000
                while (heard.updates.none { it is ClientUpdate.MessageChanged } && System.currentTimeMillis() < deadline) {
                    delay(50)
                }
                check(heard.updates.peek() is ClientUpdate.State) { "first update: ${heard.updates.peek()}" }
                check(heard.updates.any { it is ClientUpdate.MessageChanged && it.messageId == sent.id })

                bob.syncMessages(thread.id)
                val got = bob.messages(thread.id).single()
                check(got.id == sent.id && got.author == "alice") { "bob reads $got" }
                bob.playMessage(thread.id, sent.id).use { audio ->
                    check(sha256(File(audio.path()).readBytes()) == uploaded.contentHash) { "bob's copy differs" }
                }

                // Paged reads, as the Rust API has them: a page's `older` comes back as `before`.
                val page = bob.messagesPage(thread.id, 1u, null)
                check(page.messages.map { it.id } == listOf(sent.id) && page.older == null) { "page $page" }
                bob.syncThreads()
                val listed = bob.threadListPage(10u, null)
                check(listed.threads.map { it.thread.id } == listOf(thread.id)) { "list $listed" }
                // The creator removes a member: their feed forgets the thread.
                alice.removeMember(thread.id, "bob")
                bob.syncThreads()
                check(bob.threads().isEmpty()) { "bob still lists ${bob.threads()}" }

                try {
                    bob.syncMessages("no-such-thread")
                    error("a stranger's thread synced")
                } catch (e: ClientException.Rejected) {
                    check(e.code == ErrorCode.THREAD_NOT_FOUND) { "code ${e.code}" }
                }
            }
        }
    }
}

fun main(args: Array<String>) {
    if (args.size != 4) {
        System.err.println("usage: MainKt <server url> <alice token> <bob token> <folder>")
        exitProcess(2)
    }
    val ok = try {
        runBlocking { withTimeout(60_000) { story(args[0], args[1], args[2], File(args[3])) } }
        true
    } catch (e: Throwable) {
        e.printStackTrace()
        false
    }
    println(if (ok) "kotlin: ok" else "kotlin: FAILED")
    exitProcess(if (ok) 0 else 1)
}
