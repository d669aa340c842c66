//! End-to-end tests of the store as users and disks treat it, with the real binary: the
//! database file alone holds everything after a clean exit; `cairn backup` copies a file a
//! server is writing; reads work on a file another process drives while changes are refused with
//! a message naming that process; a mistyped `--db` is refused instead of creating a store; and a
//! full disk answers 503 `storage_unavailable`, keeps reads and `/healthz` up and recovers by
//! itself without losing anything acknowledged, also across `kill -9`.
//!
//! Every wait is a bounded polling loop; steps are held open by a latch file, never by a sleep.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{
    cairn_command, exit_within, http_once as http, signal, try_output_within, wait_within, Run,
    Server, LIMIT,
};

/// A `cairn.toml` with one `command` agent, `latched`, that appends `started STEP` to the file
/// named by its `log` parameter and then waits until the file named by its `latch` parameter
/// exists.
const LATCHED_TOML: &str = r#"
[agents.latched]
executor = "command"
command = ["sh", "-c", '''
in=$(cat)
latch=$(printf '%s' "$in" | sed -n 's/.*"latch":"\([^"]*\)".*/\1/p')
log=$(printf '%s' "$in" | sed -n 's/.*"log":"\([^"]*\)".*/\1/p')
echo "started $CAIRN_STEP_ID" >> "$log"
while [ ! -e "$latch" ]; do sleep 0.02; done
echo '{"ok": true}'
''']
"#;

/// `cairn ARGS` in `dir` (bounded, clean environment).
fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = cairn_command(args);
    c.current_dir(dir);
    c
}

fn cairn(dir: &Path, args: &[&str]) -> Run {
    Run::of(&mut command(dir, args), args)
}

fn cairn_json(dir: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let r = cairn(dir, &all);
    assert_eq!(r.code, 0, "cairn {}: {}", args.join(" "), r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.stdout))
}

fn plan_ids(dir: &Path, db: &str) -> Vec<String> {
    cairn_json(dir, &["plans", "list", "--db", db, "--limit", "1000"])["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["plan_id"].as_str().expect("plan_id").to_owned())
        .collect()
}

fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pred() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("cairn-store-")
        .tempdir()
        .expect("tempdir")
}

/// `cairn serve --no-auth` of `db`, run in `dir`.
fn serve(dir: &Path, db: &Path, extra: &[&str]) -> Server {
    Server::options(db)
        .in_dir(dir)
        .args(&["--no-auth"])
        .args(extra)
        .start()
}

fn plan_doc(id: &str) -> Value {
    json!({"plan_id": id, "query": "q", "steps": [
        {"step_id": "s1", "action": "echo", "agent_type": "builtin.echo", "params": {"x": 1}}
    ]})
}

// ---- item: the database file holds everything after a clean exit -----------------------------

#[test]
fn after_cairn_run_the_database_file_alone_holds_the_plan() {
    let d = tempdir();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let plan = examples.join("research.yaml");
    let config = examples.join("cairn.toml");
    let r = cairn(
        d.path(),
        &[
            "run",
            plan.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--db",
            "cairn.db",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let wal = d.path().join("cairn.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "the write-ahead log was folded into cairn.db");

    // Copy only the database file, as a user would.
    let copy = tempdir();
    std::fs::copy(d.path().join("cairn.db"), copy.path().join("cairn.db")).expect("copy");
    let view = cairn_json(
        copy.path(),
        &["plans", "show", "research_001", "--db", "cairn.db"],
    );
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(plan_ids(copy.path(), "cairn.db"), ["research_001"]);

    // Other local changes leave the file complete too.
    let r = cairn(
        d.path(),
        &[
            "checkpoints",
            "create",
            "research_001",
            "--label",
            "kept",
            "--db",
            "cairn.db",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
    let again = tempdir();
    std::fs::copy(d.path().join("cairn.db"), again.path().join("cairn.db")).expect("copy");
    let list = cairn_json(
        again.path(),
        &["checkpoints", "list", "research_001", "--db", "cairn.db"],
    );
    let labels: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["label"].as_str())
        .collect();
    assert_eq!(labels, ["kept"], "{list}");
}

// ---- item: a mistyped --db is refused ------------------------------------------------------

#[test]
fn a_missing_database_is_refused_by_name_and_not_created() {
    let d = tempdir();
    for args in [
        &["plans", "list", "--db", "typo.db"][..],
        &["plans", "show", "p1", "--db", "typo.db"],
        &["plans", "pause", "p1", "--db", "typo.db"],
        &["plans", "events", "p1", "--db", "typo.db"],
        &["checkpoints", "list", "p1", "--db", "typo.db"],
        &["steps", "skip", "p1", "s1", "--db", "typo.db"],
        &["token", "list", "--db", "typo.db"],
        &["token", "revoke", "t1", "--db", "typo.db"],
        &["backup", "--db", "typo.db", "out.db"],
    ] {
        let r = cairn(d.path(), args);
        assert_ne!(r.code, 0, "cairn {args:?} must fail");
        assert!(
            r.stderr.contains("no database at typo.db"),
            "cairn {args:?}: {}",
            r.stderr
        );
        assert!(
            !d.path().join("typo.db").exists(),
            "cairn {args:?} created it"
        );
    }
    // The commands that create a store still do.
    let r = cairn(
        d.path(),
        &[
            "token", "create", "--user", "ann", "--role", "viewer", "--db", "new.db",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(d.path().join("new.db").is_file());
    assert!(plan_ids(d.path(), "new.db").is_empty());
}

// ---- item: reads on a driven store; changes refused with the holder named --------------------

#[test]
fn reads_work_while_cairn_run_drives_the_store_and_changes_name_the_process() {
    let d = tempdir();
    std::fs::write(d.path().join("cairn.toml"), LATCHED_TOML).unwrap();
    let latch = d.path().join("latch");
    let plan = json!({"plan_id": "held", "steps": [
        {"step_id": "s1", "action": "wait", "agent_type": "latched",
         "params": {"latch": latch.to_str().unwrap(),
                    "log": d.path().join("started.log").to_str().unwrap()}},
        {"step_id": "s2", "action": "echo", "agent_type": "builtin.echo", "params": {}}
    ]});
    std::fs::write(d.path().join("plan.json"), plan.to_string()).unwrap();
    let mut run = command(d.path(), &["run", "plan.json", "--db", "cairn.db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cairn run");
    let started = d.path().join("started.log");
    wait_until("step s1 to start", || {
        std::fs::read_to_string(&started)
            .unwrap_or_default()
            .contains("started s1")
    });

    // Reads work on the driven file.
    let view = cairn_json(d.path(), &["plans", "show", "held", "--db", "cairn.db"]);
    assert_eq!(view["state"], "running", "{view}");
    assert_eq!(plan_ids(d.path(), "cairn.db"), ["held"]);
    let events = cairn_json(d.path(), &["plans", "events", "held", "--db", "cairn.db"]);
    assert!(!events["items"].as_array().unwrap().is_empty());
    cairn_json(
        d.path(),
        &["checkpoints", "list", "held", "--db", "cairn.db"],
    );
    cairn_json(d.path(), &["plans", "snapshot", "held", "--db", "cairn.db"]);

    // A change is refused, naming the process and what to do.
    let r = cairn(d.path(), &["plans", "pause", "held", "--db", "cairn.db"]);
    assert_ne!(r.code, 0);
    let pid = format!("pid {}", run.id());
    assert!(r.stderr.contains(&pid), "names {pid}: {}", r.stderr);
    assert!(r.stderr.contains("cairn run"), "{}", r.stderr);
    assert!(r.stderr.contains("Ctrl-C"), "{}", r.stderr);
    assert!(r.stderr.contains("--resume"), "{}", r.stderr);

    // The run was not disturbed by any of it.
    std::fs::write(&latch, "").unwrap();
    let status = wait_within(&mut run, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
    let view = cairn_json(d.path(), &["plans", "show", "held", "--db", "cairn.db"]);
    assert_eq!(view["state"], "completed", "{view}");
}

// ---- item: online backup while a server writes ------------------------------------------------

#[test]
fn backup_copies_a_store_a_server_is_writing_and_refuses_bad_paths() {
    let d = tempdir();
    let db = d.path().join("live.db");
    let server = serve(d.path(), &db, &[]);
    let addr = server.addr.clone();
    let (status, _) = http(&addr, "POST", "/v1/plans", Some(&plan_doc("first")));
    assert_eq!(status, 201);

    // A writer keeps registering plans while the backups run (bounded in count).
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(vec!["first".to_owned()]));
    let writer = {
        let (stop, acked, addr) = (stop.clone(), acked.clone(), addr.clone());
        std::thread::spawn(move || {
            for i in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("p{i}");
                let (status, body) = http(&addr, "POST", "/v1/plans", Some(&plan_doc(&id)));
                assert_eq!(status, 201, "{body}");
                acked.lock().unwrap().push(id);
            }
        })
    };
    wait_until("some plans to be written", || {
        acked.lock().unwrap().len() > 20
    });
    for name in ["b1.db", "b2.db"] {
        let before: Vec<String> = acked.lock().unwrap().clone();
        let r = cairn(d.path(), &["backup", "--db", "live.db", name]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        // The copy opens on its own and holds at least what was acknowledged before it began.
        let copy = tempdir();
        std::fs::copy(d.path().join(name), copy.path().join("c.db")).expect("copy the backup");
        let listed = plan_ids(copy.path(), "c.db");
        for id in &before {
            assert!(listed.contains(id), "{name} lacks {id}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");

    // While the server holds the file, a local change names it and its address.
    let r = cairn(d.path(), &["plans", "cancel", "first", "--db", "live.db"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(&format!("--server {}", server.base)),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("pid {}", server.child.id())),
        "{}",
        r.stderr
    );

    // Bad paths: a clear error and a non-zero exit, nothing overwritten.
    let before = std::fs::read(d.path().join("b1.db")).unwrap();
    for (args, says) in [
        (
            &["backup", "--db", "live.db", "b1.db"][..],
            "already exists",
        ),
        (
            &["backup", "--db", "live.db", "nodir/out.db"],
            "does not exist",
        ),
        (&["backup", "--db", "missing.db", "x.db"], "no database at"),
    ] {
        let r = cairn(d.path(), args);
        assert_ne!(r.code, 0, "{args:?}");
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    assert_eq!(std::fs::read(d.path().join("b1.db")).unwrap(), before);
    let log = server.stderr.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");

    // A clean shutdown (SIGTERM) leaves live.db complete on its own as well.
    let mut server = server;
    signal(&server.child.id().to_string(), "TERM");
    let Some(code) = exit_within(&mut server.child, Duration::from_secs(60)).map(|s| s.code())
    else {
        server.kill9();
        panic!(
            "cairn serve did not stop within 60 s of SIGTERM; stderr:\n{}",
            server.stderr.lock().unwrap()
        );
    };
    assert_eq!(code, Some(0));
    let wal = d.path().join("live.db-wal");
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
    let copy = tempdir();
    std::fs::copy(&db, copy.path().join("only.db")).expect("copy");
    let listed = plan_ids(copy.path(), "only.db");
    for id in acked.lock().unwrap().iter() {
        assert!(listed.contains(id), "live.db alone lacks {id}");
    }
    drop(server);
}

// ---- item: a full disk ---------------------------------------------------------------------

/// A 2 MiB tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (with the reason printed) where mounting is not permitted.
    fn mount(dir: PathBuf) -> Option<Tmpfs> {
        std::fs::create_dir_all(&dir).expect("mount point");
        let out = try_output_within(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
                .arg(&dir),
            LIMIT,
        );
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here ({}); the full-disk test needs root or CAP_SYS_ADMIN",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); the full-disk test needs it");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = try_output_within(Command::new("umount").arg("-l").arg(&self.dir), LIMIT);
    }
}

/// Writes into `path` until the filesystem refuses.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![7u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_answers_503_keeps_reads_up_and_recovers_without_losing_anything() {
    let d = tempdir();
    let Some(disk) = Tmpfs::mount(d.path().join("disk")) else {
        return;
    };
    std::fs::write(d.path().join("cairn.toml"), LATCHED_TOML).unwrap();
    let db = disk.dir.join("x.db");
    // Its log is on the disk that fills up: logging that fails must not stop the server.
    let mut server = Server::options(&db)
        .in_dir(d.path())
        .args(&["--no-auth", "--config", "cairn.toml"])
        .log_to(&disk.dir.join("serve.log"))
        .start();
    let addr = server.addr.clone();

    // A plan whose step is in flight when the disk fills: its outcome must not be lost.
    let latch = d.path().join("latch");
    let held = json!({"plan_id": "held", "steps": [
        {"step_id": "s1", "action": "wait", "agent_type": "latched",
         "params": {"latch": latch.to_str().unwrap(),
                    "log": d.path().join("started.log").to_str().unwrap()}}
    ]});
    assert_eq!(http(&addr, "POST", "/v1/plans", Some(&held)).0, 201);
    assert_eq!(http(&addr, "POST", "/v1/plans/held/start", None).0, 200);
    let started = d.path().join("started.log");
    wait_until("step s1 to start", || {
        std::fs::read_to_string(&started)
            .unwrap_or_default()
            .contains("started s1")
    });

    let mut acked: Vec<String> = Vec::new();
    for i in 0..3 {
        let id = format!("before{i}");
        assert_eq!(
            http(&addr, "POST", "/v1/plans", Some(&plan_doc(&id))).0,
            201
        );
        acked.push(id);
    }

    fill(&disk.dir.join("filler"));
    // The step finishes while nothing can be written.
    std::fs::write(&latch, "").unwrap();

    // Writes: refused with 503 storage_unavailable (a few may still fit), never another 5xx.
    let mut refused = 0;
    for i in 0..200 {
        let id = format!("full{i}");
        let (status, body) = http(&addr, "POST", "/v1/plans", Some(&plan_doc(&id)));
        match status {
            201 => acked.push(id),
            503 => {
                assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
                let message = body["error"]["message"].as_str().unwrap_or("");
                assert!(message.contains("full"), "the message says why: {message}");
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            other => panic!("a write on a full disk answered {other}: {body}"),
        }
    }
    assert!(refused >= 5, "writes on a full disk were not refused");
    eprintln!(
        "disk full: {refused} writes refused, {} acknowledged in all",
        acked.len()
    );
    // Reads and liveness keep answering; readiness says not ready.
    assert_eq!(http(&addr, "GET", "/healthz", None).0, 200);
    assert_eq!(http(&addr, "GET", "/v1/plans", None).0, 200);
    assert_eq!(http(&addr, "GET", "/v1/plans/before0", None).0, 200);
    let (status, body) = http(&addr, "GET", "/readyz", None);
    assert_eq!(status, 503, "{body}");

    // Space returns: the server recovers by itself.
    std::fs::remove_file(disk.dir.join("filler")).expect("remove the filler");
    wait_until("/readyz to say ready", || {
        http(&addr, "GET", "/readyz", None).0 == 200
    });
    for i in 0..3 {
        let id = format!("after{i}");
        let (status, body) = http(&addr, "POST", "/v1/plans", Some(&plan_doc(&id)));
        assert_eq!(status, 201, "{body}");
        acked.push(id);
    }
    // The outcome reported while the disk was full was recorded once space returned.
    wait_until("the held step's outcome to be recorded", || {
        http(&addr, "GET", "/v1/plans/held", None).1["state"] == "completed"
    });

    // Nothing acknowledged is lost across kill -9.
    server.kill9();
    drop(server);
    let server = serve(d.path(), &db, &["--config", "cairn.toml"]);
    for id in &acked {
        let (status, body) = http(&server.addr, "GET", &format!("/v1/plans/{id}"), None);
        assert_eq!(status, 200, "acknowledged plan {id} is lost: {body}");
    }
    let (_, held) = http(&server.addr, "GET", "/v1/plans/held", None);
    assert_eq!(held["state"], "completed", "{held}");
    drop(server);
    drop(disk);
}
