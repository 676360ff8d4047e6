//! Which files a move takes: `REMOTE:DIR/SUB` sub-paths both ways, with a
//! daemon that lists only the subtree and refuses a hostile prefix.

use std::path::Path;

use realize_proto::pb;
use tempfile::TempDir;

use crate::util::*;

#[tokio::test]
async fn a_sub_path_moves_only_that_subtree_both_ways() {
    let work = TempDir::new().unwrap();
    let home = work.path();
    let (daemon, root) = home_with_server(home, &[]).await;
    write_file(&root, "sub/a.txt", b"a");
    write_file(&root, "sub/deep/b.bin", &random_bytes(3, 3 * 1024 * 1024));
    write_file(&root, "sibling/c.txt", b"c");
    write_file(&root, "sub-not/d.txt", b"d");
    write_file(&root, "top.txt", b"top");
    let subtree = manifest(&root.join("sub"));
    let siblings = |root: &Path| {
        let mut all = manifest(root);
        all.retain(|path, _| !path.starts_with("sub/"));
        all
    };
    let untouched = siblings(&root);

    // Pull: the contents of box/sub go into ./local, the rest of box stays.
    let pull = realize_at(home, &["server:box/sub", "local"]).await;
    assert!(pull.status.success(), "{}", stderr(&pull));
    assert_eq!(manifest(&home.join("local")), subtree);
    assert_eq!(manifest(&root), untouched);
    assert!(!root.join("sub").exists(), "the moved subtree's root stays");

    // Push into another sub-path: it lands under it, the rest stays again.
    let push = realize_at(home, &["local", "server:box/new/place"]).await;
    assert!(push.status.success(), "{}", stderr(&push));
    assert_eq!(manifest(&root.join("new/place")), subtree);
    assert_eq!(siblings(&root).len(), untouched.len() + subtree.len());
    assert!(manifest(&home.join("local")).is_empty());
    assert!(home.join("local").exists(), "a local root is never removed");

    // A sub-path that does not exist moves nothing and is no failure.
    let nothing = realize_at(home, &["server:box/nope", "elsewhere"]).await;
    assert!(nothing.status.success(), "{}", stderr(&nothing));
    assert!(manifest(&home.join("elsewhere")).is_empty());
    assert_eq!(siblings(&root).len(), untouched.len() + subtree.len());
    daemon.stop().await;
}

#[tokio::test]
async fn a_hostile_list_prefix_is_invalid_argument() {
    let work = TempDir::new().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    write_file(work.path(), "outside/secret", b"secret");
    let client = KeyFiles::new(work.path(), "client");
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let mut api = api(&daemon, &client).await;
    for prefix in ["..", "../outside", "/etc", "a/../..", "a//b"] {
        let listed = api
            .list(pb::ListRequest {
                dir: "d".into(),
                prefix: prefix.into(),
                include_partial: true,
            })
            .await;
        let status = listed.map(|_| ()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{prefix}");
        assert!(
            status.message().contains("invalid path"),
            "{prefix}: {}",
            status.message()
        );
    }
    daemon.stop().await;
}

#[tokio::test]
async fn filters_leave_excluded_files_at_the_source_in_command_line_order() {
    let work = TempDir::new().unwrap();
    let home = work.path();
    let (daemon, root) = home_with_server(home, &[]).await;
    let local = home.join("local");
    write_file(&local, "a.jpg", b"a");
    write_file(&local, "scratch.tmp", b"s");
    write_file(&local, "deep/keep.tmp", b"k");
    write_file(&local, "deep/b.tmp", b"b");
    write_file(&local, "cache/c.jpg", b"c");
    std::fs::write(home.join("excludes"), "# editor files\n\n/cache/\n").unwrap();

    // keep.tmp is included before *.tmp excludes it, cache/c.jpg excluded
    // before *.jpg includes it; what stays is counted, and the run succeeds.
    let push = realize_at(
        home,
        &[
            "--include",
            "keep.tmp",
            "--exclude",
            "*.tmp",
            "--exclude-from",
            "excludes",
            "--include",
            "*.jpg",
            "--output",
            "json",
            "local",
            "server:box/in",
        ],
    )
    .await;
    assert!(push.status.success(), "{}", stderr(&push));
    let moved: Vec<String> = manifest(&root).into_keys().collect();
    assert_eq!(moved, ["in/a.jpg", "in/deep/keep.tmp"]);
    let left: Vec<String> = manifest(&local).into_keys().collect();
    assert_eq!(left, ["cache/c.jpg", "deep/b.tmp", "scratch.tmp"]);
    let out = stdout(&push);
    let summary = out.lines().last().unwrap();
    assert!(
        summary.contains(r#""excluded":3"#) && summary.contains(r#""failed":0"#),
        "{summary}"
    );
    assert_eq!(out.matches(r#""event":"excluded""#).count(), 3, "{out}");

    // The other order: *.tmp matches first, so keep.tmp stays too, and
    // c.jpg, which no rule matches, stays because there is an --include.
    write_file(&local, "deep/keep.tmp", b"k");
    let again = realize_at(
        home,
        &[
            "--exclude",
            "*.tmp",
            "--include",
            "keep.tmp",
            "local",
            "server:box/again",
        ],
    )
    .await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains("4 excluded"), "{}", stdout(&again));
    assert!(!root.join("again").exists());
    daemon.stop().await;
}

/// Every file and directory under `root`, partial files included, with the
/// content of each file: what must not change in a dry run.
fn snapshot(
    root: &Path,
) -> (
    Vec<String>,
    std::collections::BTreeMap<String, realize_core::Digest>,
) {
    (realize_core::testing::tree(root), manifest(root))
}

#[tokio::test]
async fn a_dry_run_changes_nothing_on_either_side() {
    let work = TempDir::new().unwrap();
    let home = work.path();
    let (daemon, root) = home_with_server(home, &[]).await;
    write_file(&root, "sub/new.bin", &random_bytes(5, 300_000));
    write_file(&root, "sub/same.txt", b"same");
    write_file(&root, "sub/differs.txt", b"mine");
    write_file(&root, "sub/.resumed.part", b"half");
    write_file(&root, "sub/resumed", b"whole file");
    write_file(&root, "sub/x.tmp", b"t");
    write_file(&root, "other/kept.txt", b"kept");
    let local = home.join("local");
    write_file(&local, "same.txt", b"same");
    write_file(&local, "differs.txt", b"your");
    write_file(&local, ".resumed.part", b"whole");
    let (remote_before, local_before) = (snapshot(&root), snapshot(&local));

    let pull = realize_at(
        home,
        &[
            "-n",
            "--exclude",
            "*.tmp",
            "--throttle-down",
            "1M",
            "server:box/sub",
            "local",
        ],
    )
    .await;
    assert!(pull.status.success(), "{}", stderr(&pull));
    let out = stdout(&pull);
    for line in [
        "MOVE      box/sub/new.bin (300.0 kB)",
        "IDENTICAL box/sub/same.txt (4 B)",
        "OVERWRITE box/sub/differs.txt (4 B)",
        "MOVE      box/sub/resumed (10 B)",
        "EXCLUDED  box/sub/x.tmp",
        "Would move 4 files (300.0 kB): 2 new, 1 overwritten, 1 identical, 1 excluded, 1 skipped; nothing changed",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} not in:\n{out}");
    }
    assert_eq!(snapshot(&root), remote_before);
    assert_eq!(snapshot(&local), local_before);
    assert!(
        daemon.log_line(&["send limit changed"]).is_none(),
        "a dry run configures nothing:\n{}",
        daemon.log()
    );

    // Pushing into a sub-path the daemon lacks, and pulling into a local
    // directory that does not exist: nothing is created either.
    let push = realize_at(
        home,
        &["--dry-run", "--output", "json", "local", "server:box/new"],
    )
    .await;
    assert!(push.status.success(), "{}", stderr(&push));
    let out = stdout(&push);
    let summary = out.lines().last().unwrap();
    assert!(
        summary.contains(r#""dry_run":true"#) && summary.contains(r#""would_move":2"#),
        "{out}"
    );
    assert_eq!(out.matches(r#""event":"planned""#).count(), 2, "{out}");
    let missing = home.join("missing");
    let pull = realize_at(home, &["-n", "server:box", missing.to_str().unwrap()]).await;
    assert!(pull.status.success(), "{}", stderr(&pull));
    assert!(
        stdout(&pull).contains("Would move 6 files"),
        "{}",
        stdout(&pull)
    );
    assert!(!missing.exists());
    assert_eq!(snapshot(&root), remote_before);
    assert_eq!(snapshot(&local), local_before);
    daemon.stop().await;
}
