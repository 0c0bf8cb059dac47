//! Every store behaviour, on SQLite and on PostgreSQL: one macro generates both tests.

mod common;

use std::sync::Arc;

use common::Postgres;
use confab::ids::{AttachmentId, FamilyId, MessageId, RoomId, UserId};
use confab::store::{
    self, AttachmentRecord, Change, CommitOutcome, Marker, NewMessage, NewRoom, RefreshOutcome,
    Role, RoomChanges, RoomKind, Store, StoreError, UserRecord,
};

/// A store of each kind, with whatever keeps it alive.
struct Fixture {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<Postgres>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(None, dir.path(), Default::default())
        .await
        .unwrap();
    Fixture {
        store,
        _dir: Some(dir),
        _pg: None,
    }
}

async fn postgres() -> Fixture {
    let pg = Postgres::start();
    let store = store::open(
        Some(&pg.url),
        std::path::Path::new("/unused"),
        Default::default(),
    )
    .await
    .unwrap();
    Fixture {
        store,
        _dir: None,
        _pg: Some(pg),
    }
}

macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { let f = super::sqlite().await; super::$name(&*f.store).await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { let f = super::postgres().await; super::$name(&*f.store).await; })*
        }
    };
}

store_tests!(
    usernames_are_unique,
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    logout_revokes_the_family,
    rooms_are_listed_with_role_and_unread,
    room_names_are_unique,
    direct_rooms_are_created_once,
    batches_allocate_gapless_seq_per_room,
    repeated_client_ids_return_the_first_message,
    archived_rooms_refuse_messages,
    markers_move_forward_only,
    history_pages_both_ways,
    concurrent_writers_share_one_sequence,
    settings_keep_the_first_value,
    search_finds_words_only_where_allowed_and_follows_edits,
    edits_and_deletes_keep_seq,
    bans_and_mutes_are_stored_and_lifted,
    attachments_and_totals,
    retention_deletes_old_messages_and_keeps_seq,
    every_change_takes_the_next_rev_and_the_changes_feed_follows_it,
    reactions_aggregate_in_order_and_repeats_change_nothing,
    a_failed_reaction_leaves_no_row_and_no_rev,
    thread_replies_keep_their_roots_summary_in_the_same_change,
    mentions_resolve_to_members_and_count_until_read,
    pins_are_capped_and_listed_newest_first,
    blocks_are_one_way_and_silence_mentions,
    a_deleted_account_is_gone_and_its_erased_messages_are_changes,
    a_batch_keeps_every_field_of_every_message_in_two_rooms,
);

async fn user(store: &dyn Store, name: &str) -> UserId {
    let u = UserRecord::new(name.into(), name.into(), "x".into());
    store.create_user(&u).await.unwrap();
    u.id
}

async fn room(store: &dyn Store, name: &str, kind: RoomKind, owner: UserId) -> RoomId {
    let r = store
        .create_room(&NewRoom {
            id: RoomId::new(),
            name: name.into(),
            kind,
            topic: String::new(),
            created_by: owner,
            created_at: confab::now_ms(),
        })
        .await
        .unwrap();
    r.id
}

fn msg(room: RoomId, user: UserId, body: &str, client_id: Option<&str>) -> NewMessage {
    NewMessage {
        id: MessageId::new(),
        room_id: room,
        user_id: user,
        username: "u".into(),
        body: body.into(),
        client_id: client_id.map(String::from),
        reply_to: None,
        created_at: confab::now_ms(),
        attachments: None,
        thread: None,
        mention_names: vec![],
        mentions_room: false,
    }
}

fn seqs(outcomes: &[CommitOutcome]) -> Vec<i64> {
    outcomes
        .iter()
        .map(|o| match o {
            CommitOutcome::New(m) | CommitOutcome::Duplicate(m) => m.seq,
            CommitOutcome::Rejected(_) => -1,
        })
        .collect()
}

async fn usernames_are_unique(s: &dyn Store) {
    user(s, "alice").await;
    let again = UserRecord::new("alice".into(), "A".into(), "y".into());
    assert!(matches!(
        s.create_user(&again).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.user_by_name("alice").await.unwrap().unwrap().display_name,
        "alice"
    );
    assert!(s.user_by_name("bob").await.unwrap().is_none());
}

async fn refresh_tokens_rotate_and_reuse_revokes_the_family(s: &dyn Store) {
    let u = user(s, "alice").await;
    let fam = FamilyId::new();
    let far = confab::now_ms() + 60_000;
    s.insert_refresh("t1", fam, u, far).await.unwrap();
    assert_eq!(
        s.spend_refresh("t1", confab::now_ms(), ("t2", far))
            .await
            .unwrap(),
        RefreshOutcome::Valid {
            user: u,
            family: fam
        }
    );
    // t1 comes back: theft. The whole family, t2 included, is revoked.
    assert_eq!(
        s.spend_refresh("t1", confab::now_ms(), ("next-t1", far))
            .await
            .unwrap(),
        RefreshOutcome::Reused
    );
    assert_eq!(
        s.spend_refresh("t2", confab::now_ms(), ("next-t2", far))
            .await
            .unwrap(),
        RefreshOutcome::Invalid
    );
    assert_eq!(
        s.spend_refresh("nope", confab::now_ms(), ("next-nope", far))
            .await
            .unwrap(),
        RefreshOutcome::Invalid
    );
    // The successor stored by a spend is the next one to spend, and so on.
    let fam3 = FamilyId::new();
    s.insert_refresh("a1", fam3, u, far).await.unwrap();
    for (spent, next) in [("a1", "a2"), ("a2", "a3")] {
        assert_eq!(
            s.spend_refresh(spent, confab::now_ms(), (next, far))
                .await
                .unwrap(),
            RefreshOutcome::Valid {
                user: u,
                family: fam3
            }
        );
    }
    // Expired tokens are invalid.
    let fam2 = FamilyId::new();
    s.insert_refresh("old", fam2, u, confab::now_ms() - 1)
        .await
        .unwrap();
    assert_eq!(
        s.spend_refresh("old", confab::now_ms(), ("next-old", far))
            .await
            .unwrap(),
        RefreshOutcome::Invalid
    );
}

async fn logout_revokes_the_family(s: &dyn Store) {
    let u = user(s, "alice").await;
    s.insert_refresh("t1", FamilyId::new(), u, confab::now_ms() + 60_000)
        .await
        .unwrap();
    assert!(s.revoke_family_of("t1").await.unwrap());
    assert_eq!(
        s.spend_refresh(
            "t1",
            confab::now_ms(),
            ("next-t1", confab::now_ms() + 60_000)
        )
        .await
        .unwrap(),
        RefreshOutcome::Invalid
    );
    assert!(!s.revoke_family_of("unknown").await.unwrap());
}

async fn rooms_are_listed_with_role_and_unread(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let general = room(s, "general", RoomKind::Public, a).await;
    let secret = room(s, "secret", RoomKind::Private, a).await;
    assert!(s.add_member(general, b, Role::Member).await.unwrap());
    assert!(
        !s.add_member(general, b, Role::Member).await.unwrap(),
        "adding twice is a no-op"
    );
    s.commit_messages(&[
        msg(general, a, "one", None),
        msg(general, a, "two", None),
        msg(general, b, "mine", None),
    ])
    .await
    .unwrap();
    let bobs = s.rooms_of(b).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].room.id, general);
    assert_eq!(bobs[0].role, Role::Member);
    assert_eq!(bobs[0].room.member_count, 2);
    assert_eq!(bobs[0].room.last_seq, 3);
    // Bob's own message moved his read marker to 3: nothing unread.
    assert_eq!(bobs[0].last_read_seq, 3);
    assert_eq!(bobs[0].unread, 0);
    let alices = s.rooms_of(a).await.unwrap();
    let g = alices.iter().find(|l| l.room.id == general).unwrap();
    assert_eq!((g.role, g.last_read_seq, g.unread), (Role::Owner, 2, 1));
    // Private rooms are never offered to outsiders; public ones are.
    let outside = s.public_rooms_outside(b).await.unwrap();
    assert!(outside.iter().all(|r| r.id != secret && r.id != general));
    let c = user(s, "carol").await;
    let outside: Vec<RoomId> = s
        .public_rooms_outside(c)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(outside, vec![general]);
    assert!(s.remove_member(general, b).await.unwrap());
    assert!(s.member(general, b).await.unwrap().is_none());
}

async fn room_names_are_unique(s: &dyn Store) {
    let a = user(s, "alice").await;
    room(s, "general", RoomKind::Public, a).await;
    let dup = NewRoom {
        id: RoomId::new(),
        name: "general".into(),
        kind: RoomKind::Private,
        topic: String::new(),
        created_by: a,
        created_at: 0,
    };
    assert!(matches!(
        s.create_room(&dup).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn direct_rooms_are_created_once(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let (r1, created1) = s.direct_room(a, b, 1).await.unwrap();
    let (r2, created2) = s.direct_room(b, a, 2).await.unwrap();
    assert!(created1 && !created2);
    assert_eq!(r1.id, r2.id);
    assert_eq!(r1.kind, RoomKind::Direct);
    assert_eq!(r2.member_count, 2);
}

async fn batches_allocate_gapless_seq_per_room(s: &dyn Store) {
    let a = user(s, "alice").await;
    let r1 = room(s, "one", RoomKind::Public, a).await;
    let r2 = room(s, "two", RoomKind::Public, a).await;
    let out = s
        .commit_messages(&[
            msg(r1, a, "a", None),
            msg(r2, a, "b", None),
            msg(r1, a, "c", None),
            msg(r2, a, "d", None),
        ])
        .await
        .unwrap()
        .outcomes;
    assert_eq!(seqs(&out), vec![1, 1, 2, 2]);
    let out = s
        .commit_messages(&[msg(r1, a, "e", None)])
        .await
        .unwrap()
        .outcomes;
    assert_eq!(seqs(&out), vec![3]);
    assert_eq!(s.room(r1).await.unwrap().unwrap().last_seq, 3);
    let bodies: Vec<String> = s
        .messages_after(r1, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(bodies, vec!["a", "c", "e"]);
}

async fn repeated_client_ids_return_the_first_message(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    s.add_member(r, b, Role::Member).await.unwrap();
    let first = s
        .commit_messages(&[msg(r, a, "hi", Some("c1"))])
        .await
        .unwrap()
        .outcomes;
    let CommitOutcome::New(original) = &first[0] else {
        panic!("{first:?}")
    };
    // Again in a later batch, twice inside one batch, and the same id from another user.
    let out = s
        .commit_messages(&[
            msg(r, a, "hi again", Some("c1")),
            msg(r, a, "x", Some("c2")),
            msg(r, a, "x dup", Some("c2")),
            msg(r, b, "bob's c1", Some("c1")),
        ])
        .await
        .unwrap()
        .outcomes;
    match &out[0] {
        CommitOutcome::Duplicate(m) => {
            assert_eq!((m.id, m.seq, m.body.as_str()), (original.id, 1, "hi"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&out[1], CommitOutcome::New(m) if m.seq == 2));
    assert!(matches!(&out[2], CommitOutcome::Duplicate(m) if m.seq == 2 && m.body == "x"));
    assert!(matches!(&out[3], CommitOutcome::New(m) if m.seq == 3));
    assert_eq!(
        s.room(r).await.unwrap().unwrap().last_seq,
        3,
        "no seq is spent on a duplicate"
    );
    // A resend beside a new message, with no repeat inside the batch (the path that bets on
    // no resend and falls back).
    let out = s
        .commit_messages(&[
            msg(r, b, "new", Some("c9")),
            msg(r, a, "hi, a third time", Some("c1")),
        ])
        .await
        .unwrap()
        .outcomes;
    assert!(
        matches!(&out[0], CommitOutcome::New(m) if m.seq == 4),
        "{out:?}"
    );
    assert!(
        matches!(&out[1], CommitOutcome::Duplicate(m) if m.id == original.id && m.seq == 1),
        "{out:?}"
    );
    assert_eq!(s.room(r).await.unwrap().unwrap().last_seq, 4);
}

async fn archived_rooms_refuse_messages(s: &dyn Store) {
    let a = user(s, "alice").await;
    let open = room(s, "open", RoomKind::Public, a).await;
    let closed = room(s, "closed", RoomKind::Public, a).await;
    s.archive_room(closed).await.unwrap();
    let out = s
        .commit_messages(&[msg(closed, a, "no", None), msg(open, a, "yes", None)])
        .await
        .unwrap()
        .outcomes;
    assert!(matches!(out[0], CommitOutcome::Rejected(_)));
    assert!(matches!(&out[1], CommitOutcome::New(m) if m.seq == 1));
    assert_eq!(s.room(closed).await.unwrap().unwrap().last_seq, 0);
}

async fn markers_move_forward_only(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    s.add_member(r, b, Role::Member).await.unwrap();
    s.commit_messages(&[
        msg(r, a, "1", None),
        msg(r, a, "2", None),
        msg(r, a, "3", None),
    ])
    .await
    .unwrap();
    assert!(s.move_marker(r, b, Marker::Read, 2).await.unwrap());
    assert!(
        !s.move_marker(r, b, Marker::Read, 1).await.unwrap(),
        "never back"
    );
    assert!(
        !s.move_marker(r, b, Marker::Read, 9).await.unwrap(),
        "never past the last message"
    );
    assert!(s.move_marker(r, b, Marker::Delivered, 3).await.unwrap());
    let m = s.member(r, b).await.unwrap().unwrap();
    assert_eq!((m.last_read_seq, m.last_delivered_seq), (2, 3));
    let listing = s.rooms_of(b).await.unwrap();
    assert_eq!(listing[0].unread, 1);
}

async fn history_pages_both_ways(s: &dyn Store) {
    let a = user(s, "alice").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    let batch: Vec<NewMessage> = (1..=10).map(|i| msg(r, a, &i.to_string(), None)).collect();
    s.commit_messages(&batch).await.unwrap();
    let newest: Vec<i64> = s
        .messages_before(r, i64::MAX, 3)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(newest, vec![8, 9, 10]);
    let older: Vec<i64> = s
        .messages_before(r, 8, 3)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(older, vec![5, 6, 7]);
    let after: Vec<i64> = s
        .messages_after(r, 8, 5)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(after, vec![9, 10]);
    let m = &s.messages_after(r, 0, 1).await.unwrap()[0];
    assert_eq!(
        (m.username.as_str(), m.body.as_str(), m.deleted),
        ("alice", "1", false)
    );
}

async fn concurrent_writers_share_one_sequence(s: &dyn Store) {
    // Many batches at once (as several pods' writers would): seq stays gapless and unique.
    let a = user(s, "alice").await;
    let r = room(s, "busy", RoomKind::Public, a).await;
    let mut all = Vec::new();
    let futures = (0..8).map(|w| {
        let batch: Vec<NewMessage> = (0..25)
            .map(|i| msg(r, a, &format!("{w}-{i}"), Some(&format!("{w}-{i}"))))
            .collect();
        async move { s.commit_messages(&batch).await.map(|c| c.outcomes) }
    });
    for out in futures::future::join_all(futures).await {
        all.extend(seqs(&out.unwrap()));
    }
    all.sort();
    assert_eq!(all, (1..=200).collect::<Vec<i64>>());
}

async fn settings_keep_the_first_value(s: &dyn Store) {
    assert_eq!(s.setting_init("k", "first").await.unwrap(), "first");
    assert_eq!(s.setting_init("k", "second").await.unwrap(), "first");
}

async fn search_finds_words_only_where_allowed_and_follows_edits(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let general = room(s, "general", RoomKind::Public, a).await;
    let secret = room(s, "secret", RoomKind::Private, a).await;
    s.add_member(general, b, Role::Member).await.unwrap();
    s.commit_messages(&[
        msg(general, a, "The rocket launch is on Friday", None),
        msg(general, a, "lunch at noon", None),
        msg(secret, a, "launch codes inside", None),
    ])
    .await
    .unwrap();
    let found: Vec<String> = s
        .search_room(general, "launch", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(found, vec!["The rocket launch is on Friday"]);
    // Case does not matter; every word must match.
    assert_eq!(
        s.search_room(general, "LAUNCH friday", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.search_room(general, "launch noon", 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Across rooms: only the caller's rooms.
    assert_eq!(s.search_rooms_of(a, "launch", 10).await.unwrap().len(), 2);
    let bobs = s.search_rooms_of(b, "launch", 10).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].room_id, general);
    // Query syntax is plain text.
    assert!(s.search_room(general, "\"launch OR * (", 10).await.is_ok());
    // Kept current on edit and delete.
    s.edit_message(general, 1, "the party is on Friday", 5)
        .await
        .unwrap();
    assert!(
        s.search_room(general, "launch", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.search_room(general, "party", 10).await.unwrap().len(), 1);
    s.delete_message(general, 2).await.unwrap();
    assert!(
        s.search_room(general, "lunch", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn edits_and_deletes_keep_seq(s: &dyn Store) {
    let a = user(s, "alice").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    s.commit_messages(&[msg(r, a, "helo", None), msg(r, a, "two", None)])
        .await
        .unwrap();
    let e = s.edit_message(r, 1, "hello", 1234).await.unwrap().unwrap();
    assert_eq!(
        (e.seq, e.body.as_str(), e.edited_at),
        (1, "hello", Some(1234))
    );
    let d = s.delete_message(r, 2).await.unwrap().unwrap();
    assert_eq!((d.seq, d.deleted, d.body.as_str()), (2, true, ""));
    assert!(
        s.delete_message(r, 2).await.unwrap().is_none(),
        "deleting twice changes nothing"
    );
    assert!(s.edit_message(r, 2, "undead", 1).await.unwrap().is_none());
    assert!(s.edit_message(r, 99, "none", 1).await.unwrap().is_none());
    assert_eq!(s.room(r).await.unwrap().unwrap().last_seq, 2);
    let all = s.messages_after(r, 0, 10).await.unwrap();
    assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
}

async fn bans_and_mutes_are_stored_and_lifted(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    s.add_member(r, b, Role::Member).await.unwrap();
    assert!(s.set_ban(b, Some(i64::MAX), Some("spam")).await.unwrap());
    assert!(s.set_mute(b, Some(5_000)).await.unwrap());
    let u = s.user(b).await.unwrap().unwrap();
    assert!(u.banned_at(confab::now_ms()) && u.ban_reason.as_deref() == Some("spam"));
    assert!(u.muted_at(4_999) && !u.muted_at(5_000));
    assert!(s.set_member_mute(r, b, Some(10)).await.unwrap());
    assert_eq!(s.member(r, b).await.unwrap().unwrap().muted_until, Some(10));
    assert!(
        !s.set_member_mute(r, UserId::new(), Some(10)).await.unwrap(),
        "not a member"
    );
    s.set_ban(b, None, None).await.unwrap();
    s.set_mute(b, None).await.unwrap();
    let u = s.user(b).await.unwrap().unwrap();
    assert!(!u.banned_at(confab::now_ms()) && !u.muted_at(0));
    // Revoking a user's tokens ends every family.
    s.insert_refresh("t1", FamilyId::new(), b, confab::now_ms() + 60_000)
        .await
        .unwrap();
    s.revoke_user_tokens(b).await.unwrap();
    assert_eq!(
        s.spend_refresh(
            "t1",
            confab::now_ms(),
            ("next-t1", confab::now_ms() + 60_000)
        )
        .await
        .unwrap(),
        RefreshOutcome::Invalid
    );
    // Room settings.
    let changes = RoomChanges {
        slow_mode_seconds: Some(30),
        read_only: Some(true),
        ..Default::default()
    };
    let changed = s.update_room(r, &changes).await.unwrap();
    assert_eq!(
        (
            changed.slow_mode_seconds,
            changed.read_only,
            changed.topic.as_str()
        ),
        (30, true, "")
    );
    // Finding users: substring, and LIKE wildcards are literal.
    user(s, "bo_b").await;
    let names: Vec<String> = s
        .find_users("bo", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, vec!["bo_b", "bob"]);
    let names: Vec<String> = s
        .find_users("_", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, vec!["bo_b"]);
}

async fn attachments_and_totals(s: &dyn Store) {
    let a = user(s, "alice").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    let rec = AttachmentRecord {
        id: AttachmentId::new(),
        room_id: r,
        user_id: a,
        filename: "cat.png".into(),
        content_type: "image/png".into(),
        size: 1234,
        created_at: 7,
    };
    s.insert_attachment(&rec).await.unwrap();
    assert_eq!(s.attachment(rec.id).await.unwrap(), Some(rec.clone()));
    assert_eq!(s.attachment(AttachmentId::new()).await.unwrap(), None);
    let mut m = msg(r, a, "look", None);
    m.attachments = Some(r#"[{"id":"x"}]"#.into());
    s.commit_messages(&[m]).await.unwrap();
    let stored = s.message(r, 1).await.unwrap().unwrap();
    assert_eq!(stored.attachments.as_deref(), Some(r#"[{"id":"x"}]"#));
    let t = s.totals().await.unwrap();
    assert_eq!((t.users, t.rooms, t.messages), (1, 1, 1));
    assert_eq!(s.all_rooms().await.unwrap().len(), 1);
}

async fn retention_deletes_old_messages_and_keeps_seq(s: &dyn Store) {
    let a = user(s, "alice").await;
    let keep = room(s, "keep", RoomKind::Public, a).await;
    let short = room(s, "short", RoomKind::Public, a).await;
    let changes = RoomChanges {
        retention_days: Some(Some(1)),
        ..Default::default()
    };
    s.update_room(short, &changes).await.unwrap();
    let now = confab::now_ms();
    let day = 86_400_000;
    let mut old = msg(short, a, "old", None);
    old.created_at = now - 2 * day;
    let mut ancient = msg(keep, a, "ancient", None);
    ancient.created_at = now - 400 * day;
    s.commit_messages(&[
        old,
        msg(short, a, "new", None),
        ancient,
        msg(keep, a, "recent", None),
    ])
    .await
    .unwrap();
    // Without a default, only the room with its own retention loses messages.
    assert_eq!(s.expire_messages(now, None).await.unwrap(), 1);
    let short_msgs = s.messages_after(short, 0, 10).await.unwrap();
    assert_eq!(
        short_msgs
            .iter()
            .map(|m| (m.seq, m.deleted))
            .collect::<Vec<_>>(),
        vec![(1, true), (2, false)]
    );
    // With a default of 365 days, the ancient message in the other room goes too.
    assert_eq!(s.expire_messages(now, Some(365)).await.unwrap(), 1);
    assert!(s.message(keep, 1).await.unwrap().unwrap().deleted);
    assert!(!s.message(keep, 2).await.unwrap().unwrap().deleted);
    assert_eq!(
        s.expire_messages(now, Some(365)).await.unwrap(),
        0,
        "idempotent"
    );
}

fn rev_of(s: &[CommitOutcome]) -> Vec<i64> {
    s.iter()
        .map(|o| match o {
            CommitOutcome::New(m) | CommitOutcome::Duplicate(m) => m.rev,
            CommitOutcome::Rejected(_) => -1,
        })
        .collect()
}

async fn room_rev(s: &dyn Store, room: RoomId) -> i64 {
    s.room(room).await.unwrap().unwrap().rev
}

fn made(c: Change) -> confab::store::MessageRecord {
    match c {
        Change::Made(m) => *m,
        other => panic!("expected a change, got {other:?}"),
    }
}

async fn every_change_takes_the_next_rev_and_the_changes_feed_follows_it(s: &dyn Store) {
    let a = user(s, "alice").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    let other = room(s, "other", RoomKind::Public, a).await;
    let out = s
        .commit_messages(&[
            msg(r, a, "one", None),
            msg(other, a, "elsewhere", None),
            msg(r, a, "two", None),
            msg(r, a, "three", None),
        ])
        .await
        .unwrap()
        .outcomes;
    assert_eq!(
        rev_of(&out),
        vec![1, 1, 2, 3],
        "each room counts its own changes"
    );
    let edited = s.edit_message(r, 1, "one!", 5).await.unwrap().unwrap();
    assert_eq!(edited.rev, 4);
    let deleted = s.delete_message(r, 2).await.unwrap().unwrap();
    assert_eq!(deleted.rev, 5);
    // Editing a deleted message changes nothing and takes no rev.
    assert!(s.edit_message(r, 2, "back", 6).await.unwrap().is_none());
    assert!(s.delete_message(r, 2).await.unwrap().is_none());
    assert_eq!(room_rev(s, r).await, 5);
    // The feed: everything after rev 3, in rev order, bounded by seq and limit.
    let changed = s.changes(r, 3, i64::MAX, 10).await.unwrap();
    assert_eq!(
        changed.iter().map(|m| (m.seq, m.rev)).collect::<Vec<_>>(),
        vec![(1, 4), (2, 5)]
    );
    assert_eq!(s.changes(r, 3, 1, 10).await.unwrap().len(), 1, "seq bound");
    assert_eq!(
        s.changes(r, 0, i64::MAX, 2).await.unwrap().len(),
        2,
        "limit"
    );
    assert_eq!(room_rev(s, other).await, 1);
}

async fn reactions_aggregate_in_order_and_repeats_change_nothing(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    s.commit_messages(&[msg(r, a, "hi", None)]).await.unwrap();
    let m = made(s.react(r, 1, b, "👍", true).await.unwrap());
    assert_eq!(m.rev, 2);
    made(s.react(r, 1, a, "🎉", true).await.unwrap());
    let m = made(s.react(r, 1, a, "👍", true).await.unwrap());
    assert_eq!(m.rev, 4);
    let agg: Vec<confab::store::ReactionCount> =
        serde_json::from_str(m.reactions.as_deref().unwrap()).unwrap();
    assert_eq!(
        agg.iter()
            .map(|c| (c.emoji.as_str(), c.count, c.users.clone()))
            .collect::<Vec<_>>(),
        vec![("👍", 2, vec![b, a]), ("🎉", 1, vec![a])],
        "emoji in order of first use, users in order of reaction"
    );
    // Repeating a reaction or removing one that is not there: nothing written, no rev.
    assert_eq!(
        s.react(r, 1, b, "👍", true).await.unwrap(),
        Change::Unchanged
    );
    assert_eq!(
        s.react(r, 1, b, "🎉", false).await.unwrap(),
        Change::Unchanged
    );
    assert_eq!(room_rev(s, r).await, 4);
    let m = made(s.react(r, 1, a, "🎉", false).await.unwrap());
    assert_eq!(m.rev, 5);
    let agg: Vec<confab::store::ReactionCount> =
        serde_json::from_str(m.reactions.as_deref().unwrap()).unwrap();
    assert_eq!(agg.len(), 1);
    // History pages carry the aggregate without another query.
    let page = s.messages_after(r, 0, 10).await.unwrap();
    assert_eq!(page[0].reactions, m.reactions);
    // A deleted message loses its reactions and takes none.
    s.delete_message(r, 1).await.unwrap().unwrap();
    assert!(s.message(r, 1).await.unwrap().unwrap().reactions.is_none());
    assert_eq!(
        s.react(r, 1, b, "👍", true).await.unwrap(),
        Change::NoMessage
    );
    assert_eq!(
        s.react(r, 9, b, "👍", true).await.unwrap(),
        Change::NoMessage
    );
}

async fn a_failed_reaction_leaves_no_row_and_no_rev(s: &dyn Store) {
    let a = user(s, "alice").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    s.commit_messages(&[msg(r, a, "hi", None)]).await.unwrap();
    for i in 0..store::MAX_EMOJI_PER_MESSAGE {
        made(s.react(r, 1, a, &format!(":e{i}:"), true).await.unwrap());
    }
    let before = room_rev(s, r).await;
    assert_eq!(
        s.react(r, 1, a, ":one_more:", true).await.unwrap(),
        Change::TooMany
    );
    assert_eq!(room_rev(s, r).await, before, "no rev taken");
    // An emoji already on the message is not a new one: another user may still add it.
    let b = user(s, "bob").await;
    made(s.react(r, 1, b, ":e0:", true).await.unwrap());
    // The refused one left no row: removing it changes nothing.
    assert_eq!(
        s.react(r, 1, a, ":one_more:", false).await.unwrap(),
        Change::Unchanged
    );
}

async fn thread_replies_keep_their_roots_summary_in_the_same_change(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    s.commit_messages(&[msg(r, a, "root", None)]).await.unwrap();
    let reply = |who, body: &str| {
        let mut m = msg(r, who, body, None);
        m.thread = Some(1);
        m
    };
    let c = s
        .commit_messages(&[
            reply(b, "first"),
            msg(r, a, "top", None),
            reply(a, "second"),
        ])
        .await
        .unwrap();
    assert_eq!(rev_of(&c.outcomes), vec![2, 3, 4]);
    assert_eq!(c.roots.len(), 1);
    let root = &c.roots[0];
    assert_eq!(root.rev, 4, "the root carries its last reply's rev");
    let summary: store::ThreadSummary =
        serde_json::from_str(root.thread_summary.as_deref().unwrap()).unwrap();
    assert_eq!(
        (
            summary.reply_count,
            summary.last_reply_seq,
            summary.participants
        ),
        (2, 4, vec![b, a])
    );
    assert_eq!(
        room_rev(s, r).await,
        4,
        "a reply and its root's summary are one change"
    );
    let replies = s.thread_replies(r, 1, 0, 10).await.unwrap();
    assert_eq!(
        replies.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 4]
    );
    assert_eq!(s.thread_replies(r, 1, 2, 10).await.unwrap().len(), 1);
    assert!(s.thread_replies(r, 3, 0, 10).await.unwrap().is_empty());
}

async fn mentions_resolve_to_members_and_count_until_read(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let outsider = user(s, "carol").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    s.add_member(r, b, Role::Member).await.unwrap();
    let named = |body: &str, names: &[&str], room_too: bool| {
        let mut m = msg(r, a, body, None);
        m.mention_names = names.iter().map(|n| n.to_string()).collect();
        m.mentions_room = room_too;
        m
    };
    let out = s
        .commit_messages(&[
            named("@bob @carol @bob", &["bob", "carol"], false),
            named("@room", &[], true),
            msg(r, a, "plain", None),
        ])
        .await
        .unwrap()
        .outcomes;
    let CommitOutcome::New(first) = &out[0] else {
        panic!("{out:?}")
    };
    let ids: Vec<UserId> = serde_json::from_str(first.mentions.as_deref().unwrap()).unwrap();
    assert_eq!(ids, vec![b], "members only, once");
    assert!(s.message(r, 2).await.unwrap().unwrap().mentions_room);
    let count = |listings: Vec<store::RoomListing>| listings[0].mentions;
    assert_eq!(count(s.rooms_of(b).await.unwrap()), 2);
    assert_eq!(
        count(s.rooms_of(a).await.unwrap()),
        0,
        "not one's own messages"
    );
    s.move_marker(r, b, Marker::Read, 1).await.unwrap();
    assert_eq!(count(s.rooms_of(b).await.unwrap()), 1);
    s.move_marker(r, b, Marker::Read, 3).await.unwrap();
    assert_eq!(count(s.rooms_of(b).await.unwrap()), 0);
    assert!(s.rooms_of(outsider).await.unwrap().is_empty());
}

async fn pins_are_capped_and_listed_newest_first(s: &dyn Store) {
    let a = user(s, "alice").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    let batch: Vec<NewMessage> = (0..store::MAX_PINS + 1)
        .map(|i| msg(r, a, &format!("m{i}"), None))
        .collect();
    s.commit_messages(&batch).await.unwrap();
    for seq in 1..=store::MAX_PINS {
        let m = made(s.pin(r, seq, Some(1000 + seq)).await.unwrap());
        assert!(m.pinned_at.is_some());
    }
    let before = room_rev(s, r).await;
    assert_eq!(
        s.pin(r, store::MAX_PINS + 1, Some(5000)).await.unwrap(),
        Change::TooMany
    );
    assert_eq!(s.pin(r, 1, Some(6000)).await.unwrap(), Change::Unchanged);
    assert_eq!(room_rev(s, r).await, before);
    let pins = s.pins(r).await.unwrap();
    assert_eq!(pins.len() as i64, store::MAX_PINS);
    assert_eq!(pins[0].seq, store::MAX_PINS, "most recently pinned first");
    let m = made(s.pin(r, 3, None).await.unwrap());
    assert!(m.pinned_at.is_none());
    made(s.pin(r, store::MAX_PINS + 1, Some(7000)).await.unwrap());
    assert_eq!(s.pins(r).await.unwrap()[0].seq, store::MAX_PINS + 1);
    assert_eq!(s.pin(r, 999, Some(1)).await.unwrap(), Change::NoMessage);
}

async fn blocks_are_one_way_and_silence_mentions(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let r = room(s, "general", RoomKind::Public, a).await;
    s.add_member(r, b, Role::Member).await.unwrap();
    s.add_member(r, c, Role::Member).await.unwrap();
    assert!(s.set_block(a, b, true, 1).await.unwrap());
    assert!(
        !s.set_block(a, b, true, 2).await.unwrap(),
        "already blocked"
    );
    let names: Vec<String> = s
        .blocked_users(a)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, vec!["bob"]);
    assert!(s.blocked_users(b).await.unwrap().is_empty(), "one way");
    assert_eq!(s.blockers_of(b, &[a, c]).await.unwrap(), vec![a]);
    assert!(s.blockers_of(a, &[b, c]).await.unwrap().is_empty());
    assert!(s.blocked_in(r, b).await.unwrap());
    assert!(!s.blocked_in(r, a).await.unwrap());
    // Bob's mention of Alice is dropped; of Carol kept. Alice's of Bob is kept.
    let mut from_bob = msg(r, b, "@alice @carol", None);
    from_bob.mention_names = vec!["alice".into(), "carol".into()];
    let mut from_alice = msg(r, a, "@bob", None);
    from_alice.mention_names = vec!["bob".into()];
    let out = s
        .commit_messages(&[from_bob, from_alice])
        .await
        .unwrap()
        .outcomes;
    let ids = |o: &CommitOutcome| -> Vec<UserId> {
        match o {
            CommitOutcome::New(m) => m
                .mentions
                .as_deref()
                .map(|j| serde_json::from_str(j).unwrap())
                .unwrap_or_default(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ids(&out[0]), vec![c]);
    assert_eq!(ids(&out[1]), vec![b]);
    assert!(s.set_block(a, b, false, 3).await.unwrap());
    assert!(!s.blocked_in(r, b).await.unwrap());
}

async fn a_deleted_account_is_gone_and_its_erased_messages_are_changes(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let r1 = room(s, "one", RoomKind::Public, a).await;
    let r2 = room(s, "two", RoomKind::Public, a).await;
    s.add_member(r1, b, Role::Member).await.unwrap();
    s.commit_messages(&[
        msg(r1, b, "b1", None),
        msg(r1, a, "a1", None),
        msg(r2, b, "b2", None),
        msg(r1, b, "b3", None),
    ])
    .await
    .unwrap();
    // Bob's messages in time order, a page at a time.
    let first = s
        .messages_by(b, (i64::MIN, MessageId(uuid::Uuid::nil())), 2)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        vec!["b1", "b2"]
    );
    let last = first.last().unwrap();
    let rest = s
        .messages_by(b, (last.created_at, last.id), 2)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        vec!["b3"]
    );

    let erased = s.delete_user(b, true, 9).await.unwrap().unwrap();
    let mut got: Vec<(RoomId, i64, i64)> = erased.iter().map(|e| (e.room, e.seq, e.rev)).collect();
    got.sort();
    let mut want = vec![(r1, 1, 4), (r1, 3, 5), (r2, 1, 2)];
    want.sort();
    assert_eq!(
        got, want,
        "each erased message is a change with its own rev"
    );
    assert_eq!(room_rev(s, r1).await, 5);
    let m = s.message(r1, 3).await.unwrap().unwrap();
    assert!(m.deleted && m.body.is_empty());
    assert!(
        !s.message(r1, 2).await.unwrap().unwrap().deleted,
        "others' stay"
    );
    assert!(s.user(b).await.unwrap().is_none());
    assert!(s.user_by_name("bob").await.unwrap().is_none());
    assert!(s.member(r1, b).await.unwrap().is_none());
    assert!(
        s.delete_user(b, true, 10).await.unwrap().is_none(),
        "already gone"
    );
    // Without erasing, the messages stay.
    s.delete_user(a, false, 11).await.unwrap().unwrap();
    assert_eq!(s.message(r1, 2).await.unwrap().unwrap().body, "a1");
}

/// PostgreSQL inserts a batch as one array per column: every field of every message must land
/// in its own column and row, whichever fields each message leaves empty.
async fn a_batch_keeps_every_field_of_every_message_in_two_rooms(s: &dyn Store) {
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let general = room(s, "general", RoomKind::Public, a).await;
    let random = room(s, "random", RoomKind::Public, a).await;
    s.commit_messages(&[msg(general, a, "root", Some("r"))])
        .await
        .unwrap();
    let mut reply = msg(general, b, "a reply with a file", Some("b-1"));
    reply.reply_to = Some(1);
    reply.attachments = Some(r#"[{"id":"f"}]"#.into());
    reply.created_at = 1_000;
    let mut threaded = msg(general, a, "in the thread, to @room", None);
    threaded.thread = Some(1);
    threaded.mentions_room = true;
    threaded.created_at = 2_000;
    let mut elsewhere = msg(random, b, "elsewhere", Some("b-2"));
    elsewhere.created_at = 3_000;
    let sent = [reply, threaded, elsewhere];
    let c = s.commit_messages(&sent).await.unwrap();
    assert_eq!(seqs(&c.outcomes), vec![2, 3, 1]);
    for (m, (room, seq)) in sent.iter().zip([(general, 2), (general, 3), (random, 1)]) {
        let stored = s.message(room, seq).await.unwrap().unwrap();
        assert_eq!(
            (
                stored.id,
                stored.user_id,
                stored.body.as_str(),
                stored.created_at,
                stored.client_id.as_deref(),
                stored.reply_to,
                stored.attachments.as_deref(),
                stored.thread,
                stored.mentions_room,
                stored.deleted,
                stored.edited_at,
            ),
            (
                m.id,
                m.user_id,
                m.body.as_str(),
                m.created_at,
                m.client_id.as_deref(),
                m.reply_to,
                m.attachments.as_deref(),
                m.thread,
                m.mentions_room,
                false,
                None,
            ),
            "{} is stored as sent",
            m.body
        );
    }
}
