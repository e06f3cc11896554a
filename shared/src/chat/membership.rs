//! Membership after creation: any member adds someone, the creator removes a member, anyone
//! leaves (docs/protocol.md, "Membership").
//!
//! Each change is one transaction: the thread record under its version (members, and the
//! next position of its log), the change's entry at that position of the thread's log (so
//! members learn it by sync and a poke), and an entry in the changed member's feed under its
//! head (`left` for a removal), so their client adds or forgets the thread. A retry re-reads
//! the record: adding a member who is one, or removing one who is not, writes nothing.
//!
//! Races closed: two changes at once both condition on the record's version; the loser reads
//! the record again and starts from the members it holds now (`guards::membership_reread`),
//! so no change is lost and the record's members are exactly the users whose feed's latest
//! entry for the thread is a join ([`membership_violations`], checked by the simulation).

use std::collections::BTreeMap;

use super::ChatService;
use crate::domain::{
    EntryState, FeedEntry, LogHead, MembershipChange, MembershipEvent, Page, ReadMarker, Seq,
    ThreadId, ThreadLogEntry, ThreadRecord, ThreadView, UserId, MAX_THREAD_MEMBERS,
};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{BlobStore, Expect, Item, TransactionalIndex};
use crate::protocol::codec::expect_of;
use crate::protocol::{guards, keys, Step};

impl<B: BlobStore, I: TransactionalIndex> ChatService<B, I> {
    /// Marks the thread read up to position `cursor` for the caller (a member), and tells
    /// their other devices through their feed: a feed entry with `read_cursor`. A marker
    /// only moves forward: at or behind the current one, nothing is written (`false`).
    pub async fn mark_read(
        &self,
        caller: &UserId,
        thread: &ThreadId,
        cursor: Seq,
    ) -> Result<bool, DedupError> {
        self.core
            .cas(|| self.mark_read_step(caller, thread, cursor))
            .await
    }

    async fn mark_read_step(
        &self,
        caller: &UserId,
        thread: &ThreadId,
        cursor: Seq,
    ) -> Result<Step<bool>, DedupError> {
        let t = self.member_thread(caller, thread).await?;
        if cursor > t.value.last_seq {
            return Err(super::threads::ahead_cursor());
        }
        let key = keys::read_marker(caller, thread);
        let marker = self.core.load::<ReadMarker>(&key).await?;
        if marker.as_ref().is_some_and(|m| m.value.read_seq >= cursor) {
            return Ok(Step::Done(false));
        }
        let (created_upto, own_upto) = self.counts_upto(caller, &t.value, cursor).await?;
        let mut txn = self.core.txn();
        txn.put(
            key,
            &ReadMarker {
                read_seq: cursor,
                created_upto,
                own_upto,
            },
            expect_of(marker.as_ref()),
        )?;
        // The member check holds at commit: a removal in between fails this transaction.
        txn.check(keys::thread(thread), t.expect());
        let head = self.core.load::<LogHead>(&keys::feed_head(caller)).await?;
        let fseq = head.as_ref().map_or(0, |h| h.value.last_seq) + 1;
        txn.put(
            keys::feed_head(caller),
            &LogHead { last_seq: fseq },
            expect_of(head.as_ref()),
        )?;
        let entry = FeedEntry {
            seq: fseq,
            thread: ThreadView {
                read_cursor: Some(cursor.to_string()),
                ..t.value.view()
            },
        };
        txn.put(keys::feed_entry(caller, fseq), &entry, Expect::Absent)?;
        Ok(if self.core.commit(txn).await? {
            Step::Done(true)
        } else {
            Step::Lost
        })
    }

    /// The thread's message counters as they stood at position `cursor`: messages created at
    /// or before it, and the caller's among them. At the head (a client marking what it just
    /// synced) they are the record's; behind it, the creations after `cursor` are read from
    /// the log and taken off, pages of 500: the entries the reader has not read yet. The
    /// transaction checks the record's version, so the log read matches the counters.
    async fn counts_upto(
        &self,
        caller: &UserId,
        t: &ThreadRecord,
        cursor: Seq,
    ) -> Result<(u64, u64), DedupError> {
        let own_now = t.authored.get(caller).copied().unwrap_or(0);
        let (mut created, mut own) = (0u64, 0u64);
        let mut after = cursor;
        while after < t.last_seq {
            let page: Page<ThreadLogEntry> = self
                .read_log(&keys::thread_log_pk(&t.id), after, super::threads::MAX_PAGE)
                .await?;
            for m in page.items.iter().filter_map(ThreadLogEntry::message) {
                // A creation's entry stays `live` after a deletion (which has its own entry).
                if m.state == EntryState::Live
                    && m.cursor.parse::<Seq>().is_ok_and(|s| s <= t.last_seq)
                {
                    created += 1;
                    own += u64::from(&m.author == caller);
                }
            }
            let next = super::parse_cursor(Some(&page.next_cursor))?;
            if !page.has_more || next <= after {
                break;
            }
            after = next;
        }
        Ok((
            t.messages_created.saturating_sub(created),
            own_now.saturating_sub(own),
        ))
    }

    /// Adds `member` to the thread, for any member of it (`true`: added now; `false`: they
    /// were one already, nothing written). The new member reads the whole history.
    pub async fn add_member(
        &self,
        caller: &UserId,
        thread: &ThreadId,
        member: &UserId,
    ) -> Result<(ThreadView, bool), DedupError> {
        let first = self.member_thread(caller, thread).await?.value;
        self.core
            .cas(|| self.change_step(caller, thread, member, &first, true))
            .await
    }

    /// Removes `member` from the thread: the creator may remove anyone, anyone may remove
    /// themselves (leaving). `true` if removed now; `false` if they were not a member. A
    /// caller who is not a member gets 404, so a retried leave answers 404 too.
    pub async fn remove_member(
        &self,
        caller: &UserId,
        thread: &ThreadId,
        member: &UserId,
    ) -> Result<bool, DedupError> {
        let first = self.member_thread(caller, thread).await?.value;
        if caller != member && caller != &first.created_by {
            return Err(DedupError::refused(
                ErrorCode::Forbidden,
                "only the thread's creator removes other members",
            ));
        }
        self.core
            .cas(|| self.change_step(caller, thread, member, &first, false))
            .await
            .map(|(_, changed)| changed)
    }

    async fn change_step(
        &self,
        caller: &UserId,
        thread: &ThreadId,
        member: &UserId,
        first: &ThreadRecord,
        add: bool,
    ) -> Result<Step<(ThreadView, bool)>, DedupError> {
        // The caller must still be a member: one removed meanwhile gets the stranger's 404.
        let t = self.member_thread(caller, thread).await?;
        let base = if guards::membership_reread() {
            &t.value.members
        } else {
            &first.members
        };
        let present = base.contains(member);
        if present == add {
            return Ok(Step::Done((t.value.view(), false)));
        }
        let mut rec = t.value.clone();
        let event = if add {
            if base.len() >= MAX_THREAD_MEMBERS {
                return Err(DedupError::refused(
                    ErrorCode::TooManyMembers,
                    format!("a thread has at most {MAX_THREAD_MEMBERS} members"),
                ));
            }
            rec.members = base.clone();
            rec.members.push(member.clone());
            MembershipChange::MemberAdded
        } else {
            rec.members = base.iter().filter(|m| *m != member).cloned().collect();
            rec.unannounced.retain(|m| m != member);
            if caller == member {
                MembershipChange::MemberLeft
            } else {
                MembershipChange::MemberRemoved
            }
        };
        let now = self.core.now();
        let seq = rec.last_seq + 1;
        rec.last_seq = seq;
        rec.updated_at = now;
        let entry = MembershipEvent {
            thread_id: thread.clone(),
            cursor: seq.to_string(),
            event,
            member: member.clone(),
            by: caller.clone(),
            at: now,
        };
        let view = rec.view();
        let mut txn = self.core.txn();
        txn.put(keys::thread(thread), &rec, t.expect())?;
        txn.put(keys::thread_log(thread, seq), &entry, Expect::Absent)?;
        let head = self.core.load::<LogHead>(&keys::feed_head(member)).await?;
        let fseq = head.as_ref().map_or(0, |h| h.value.last_seq) + 1;
        txn.put(
            keys::feed_head(member),
            &LogHead { last_seq: fseq },
            expect_of(head.as_ref()),
        )?;
        let feed = FeedEntry {
            seq: fseq,
            thread: ThreadView {
                left: !add,
                ..view.clone()
            },
        };
        txn.put(keys::feed_entry(member, fseq), &feed, Expect::Absent)?;
        Ok(if self.core.commit(txn).await? {
            Step::Done((view, true))
        } else {
            Step::Lost
        })
    }
}

/// The membership invariant over a dump of the index: for every thread, its record's members
/// (less those still `unannounced`) are exactly the users whose feed's latest entry for it
/// is a join, and no record lists more than `MAX_THREAD_MEMBERS`. Empty when it holds.
pub fn membership_violations(items: &[Item]) -> Vec<String> {
    let mut threads: BTreeMap<ThreadId, ThreadRecord> = BTreeMap::new();
    // (thread, user) -> (feed position, joined) of the user's latest entry for the thread.
    let mut latest: BTreeMap<(ThreadId, String), (u64, bool)> = BTreeMap::new();
    for item in items {
        let (pk, sk) = (&item.key.pk, &item.key.sk);
        if pk.starts_with("THREAD#") && sk == "META" {
            if let Ok(t) = serde_json::from_str::<ThreadRecord>(&item.body) {
                threads.insert(t.id.clone(), t);
            }
        } else if let Some(user) = pk.strip_prefix("FEED#") {
            if let Ok(e) = serde_json::from_str::<FeedEntry>(&item.body) {
                if e.thread.read_cursor.is_some() {
                    continue; // a read marker, not a membership change
                }
                let at = latest
                    .entry((e.thread.id.clone(), user.to_owned()))
                    .or_insert((0, false));
                if e.seq >= at.0 {
                    *at = (e.seq, !e.thread.left);
                }
            }
        }
    }
    let mut bad = Vec::new();
    for (id, t) in &threads {
        if t.members.len() > MAX_THREAD_MEMBERS {
            bad.push(format!("thread {id}: {} members", t.members.len()));
        }
        for m in &t.members {
            let announced = !t.unannounced.contains(m);
            let joined = latest
                .get(&(id.clone(), m.to_string()))
                .is_some_and(|(_, j)| *j);
            if announced && !joined {
                bad.push(format!("thread {id}: member {m} has no join in their feed"));
            }
        }
    }
    for ((id, user), (_, joined)) in &latest {
        let member = threads
            .get(id)
            .is_some_and(|t| t.members.iter().any(|m| m.as_str() == user));
        if *joined && !member {
            bad.push(format!(
                "thread {id}: {user}'s feed says joined, the record does not list them"
            ));
        }
    }
    bad
}
