//! The approvals queue's tests, on real SQLite files.

use super::*;

fn queue() -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Queue::open(&dir.path().join("audit.db")).expect("queue");
    (dir, q)
}

#[test]
fn an_item_is_decided_once_and_only_before_its_deadline() {
    let (_d, q) = queue();
    let subject = serde_json::json!(["git", "status"]);
    let a = q.submit("command", &subject, "not allow-listed", Duration::from_secs(60)).expect("submit");
    assert_eq!(a.status, ApprovalStatus::Pending);
    assert_eq!(q.list(Some(ApprovalStatus::Pending), None, 10).expect("list").len(), 1);
    let done = q.decide(a.id, true, "alice", Some("looks fine")).expect("approve");
    assert_eq!(done.note.as_deref(), Some("looks fine"));
    assert_eq!((done.status, done.decided_by.as_deref()), (ApprovalStatus::Approved, Some("alice")));
    let again = q.decide(a.id, false, "mallory", None).expect_err("decided twice");
    assert!(again.to_string().contains("already approved"), "{again}");
    assert!(matches!(q.decide(999, true, "alice", None), Err(ApprovalError::NotFound(999))));

    let b = q.submit("command", &subject, "not allow-listed", Duration::from_millis(50)).expect("submit");
    std::thread::sleep(Duration::from_millis(80));
    let late = q.decide(b.id, true, "alice", None).expect_err("past its deadline");
    assert!(late.to_string().contains("already expired"), "{late}");
    let waited = q.wait(b.id, Duration::from_millis(10)).expect("wait");
    assert_eq!(waited.status, ApprovalStatus::Expired);
    assert_eq!(waited.decided_by, None);
}

#[test]
fn an_item_whose_waiter_ended_expires_instead_of_being_approved_for_nothing() {
    let (d, q) = queue();
    let item = q.submit("command", &serde_json::json!(["x"]), "r", Duration::from_secs(60)).expect("submit");
    assert!(q.expire_overdue().expect("expire").is_empty(), "this process still waits");
    let c = Connection::open(d.path().join("audit.db")).expect("open");
    c.execute("UPDATE approvals SET waiter = '999999999:1' WHERE id = ?1", [item.id]).expect("orphan it");
    let e = q.decide(item.id, true, "alice", None).expect_err("nobody would run it");
    assert!(e.to_string().contains("already expired"), "{e}");
    let end = q.get(item.id).expect("get").expect("item");
    assert_eq!(end.note.as_deref(), Some(ORPHANED));
}

/// With a data key, subjects, notes and outcomes are sealed in the database,
/// bound to their item and column, and read back in the clear.
#[test]
fn sealed_values_are_stored_sealed_and_bound_to_their_item() {
    let (d, mut q) = queue();
    q.key = Some(crate::seal::DataKey::from_hex(&"5a".repeat(32)).expect("key"));
    let subject = serde_json::json!({"argv": ["rm", "SECRET_SUBJECT"]});
    let a = q.submit("command", &subject, "r", Duration::from_secs(60)).expect("submit");
    let b = q.submit("command", &serde_json::json!(["ls"]), "r", Duration::from_secs(60)).expect("submit");
    q.decide(a.id, true, "alice", Some("SECRET_NOTE")).expect("approve");
    let done = q.complete(a.id, &serde_json::json!({"stdout": "SECRET_OUTCOME"})).expect("complete");
    assert_eq!(done.subject, subject);
    assert_eq!(done.note.as_deref(), Some("SECRET_NOTE"));
    assert_eq!(done.outcome, Some(serde_json::json!({"stdout": "SECRET_OUTCOME"})));
    let c = Connection::open(d.path().join("audit.db")).expect("open");
    let (kinds, bytes): (String, Vec<u8>) = c
        .query_row(
            "SELECT typeof(subject) || typeof(note) || typeof(outcome), CAST(subject || note || outcome AS BLOB)
             FROM approvals WHERE id = ?1",
            [a.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row");
    assert_eq!(kinds, "blobblobblob");
    assert!(!bytes.windows(6).any(|w| w == b"SECRET"), "in the clear");
    // A subject moved to another item does not open there.
    c.execute(
        "UPDATE approvals SET subject = (SELECT subject FROM approvals WHERE id = ?1) WHERE id = ?2",
        [a.id, b.id],
    )
    .expect("move");
    let e = q.get(b.id).expect_err("moved");
    assert!(e.to_string().contains("does not open"), "{e}");
    // A subject written in the clear by hand is not taken as genuine either.
    c.execute("UPDATE approvals SET subject = '[\"ls\"]' WHERE id = ?1", [b.id]).expect("forge");
    let e = q.get(b.id).expect_err("forged");
    assert!(e.to_string().contains("written by hand"), "{e}");
    // So is a decider's note rewritten in the clear; Terrarium's own notes on
    // expired items are in the clear.
    c.execute("UPDATE approvals SET note = 'LGTM' WHERE id = ?1", [a.id]).expect("forge a note");
    assert!(q.get(a.id).expect_err("forged note").to_string().contains("its note is in the clear"));
    let d = q.submit("command", &serde_json::json!(["ls"]), "r", Duration::from_secs(60)).expect("submit");
    c.execute("UPDATE approvals SET waiter = '999999999:1' WHERE id = ?1", [d.id]).expect("orphan it");
    q.expire_overdue().expect("expire");
    assert_eq!(q.get(d.id).expect("own note").expect("item").note.as_deref(), Some(ORPHANED));
    // Without the key, a sealed item is an error, never shown sealed as text.
    q.key = None;
    let e = q.get(a.id).expect_err("no key");
    assert!(e.to_string().contains("no data key is set"), "{e}");
}

/// A caller cannot decide its own request; notes are bounded.
#[test]
fn the_caller_does_not_decide_its_own_request() {
    let (_d, q) = queue();
    let subject = serde_json::json!({"argv": ["x"], "caller": "ci"});
    let item = q.submit("command", &subject, "r", Duration::from_secs(60)).expect("submit");
    assert!(matches!(q.decide(item.id, true, "ci", None), Err(ApprovalError::OwnRequest(_))));
    let long = "n".repeat(MAX_NOTE + 1);
    assert!(matches!(q.decide(item.id, true, "alice", Some(&long)), Err(ApprovalError::NoteTooLong(_))));
    assert_eq!(q.decide(item.id, true, "alice", None).expect("another person").status, ApprovalStatus::Approved);
}

/// H9 and H6: a pending item is listed whatever number of newer decided ones
/// there are; pages are bounded; a subject too large to review is refused.
#[test]
fn h9_a_pending_item_is_never_hidden_by_newer_ones_and_h6_subjects_are_capped() {
    let (_d, q) = queue();
    let old = q.submit("command", &serde_json::json!(["x"]), "r", Duration::from_secs(60)).expect("submit");
    for _ in 0..1001 {
        let i = q.submit("command", &serde_json::json!(["y"]), "r", Duration::from_secs(60)).expect("submit");
        q.decide(i.id, false, "bob", None).expect("deny");
    }
    let pending = q.list(Some(ApprovalStatus::Pending), None, 10).expect("list");
    assert_eq!(pending.iter().map(|i| i.id).collect::<Vec<_>>(), [old.id]);
    assert_eq!(q.pending().expect("count"), 1);
    assert!(q.fingerprint(10).expect("fingerprint").starts_with(&format!("{}:pending:", old.id)));
    let page = q.list(None, None, 5000).expect("list");
    assert_eq!(page.len(), MAX_PAGE, "a page is capped");
    let next = q.list(None, Some(page[page.len() - 1].id), 5000).expect("next page");
    assert_eq!(next.len(), 2, "the rest, older first page's last id");
    assert_eq!(q.recently_decided(3).expect("recent").len(), 3);
    let big = serde_json::json!(["echo", "x".repeat(MAX_SUBJECT)]);
    let e = q.submit("command", &big, "r", Duration::from_secs(60)).expect_err("too large");
    assert!(e.to_string().contains("more than the 262144"), "{e}");
}

#[test]
fn a_waiter_sees_another_connections_decision() {
    let (d, q) = queue();
    let item = q.submit("command", &serde_json::json!(["x"]), "r", Duration::from_secs(30)).expect("submit");
    let path = d.path().join("audit.db");
    let id = item.id;
    let decider = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        Queue::open(&path).expect("second opener").decide(id, false, "bob", None).expect("deny")
    });
    let end = q.wait(item.id, Duration::from_millis(10)).expect("wait");
    decider.join().expect("decider");
    assert_eq!((end.status, end.decided_by.as_deref()), (ApprovalStatus::Denied, Some("bob")));
}
