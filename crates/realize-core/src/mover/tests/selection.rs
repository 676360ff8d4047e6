//! Which files a move takes: a sub-path's subtree only, landing where
//! rclone would put the contents of SRC in DST; the files the rules include.

use super::*;
use crate::mover::{FilterRules, Rule, Subtree};

fn path(p: &str) -> RelPath {
    RelPath::new(p).unwrap()
}

fn subtree(source: Option<&str>, destination: Option<&str>) -> Subtree {
    Subtree {
        dir: dir(),
        source: source.map(path),
        destination: destination.map(path),
    }
}

async fn run(sides: &Sides, root: Subtree) -> MoveSummary {
    run_with(sides, root, &options()).await
}

async fn run_with(sides: &Sides, root: Subtree, options: &MoveOptions) -> MoveSummary {
    let (src, dst) = (store(sides.src()), store(sides.dst()));
    move_files(&src, &dst, &[root], options, &NoProgress, &Stop::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_source_sub_path_moves_its_contents_into_the_destination_root() {
    let sides = Sides::new();
    write_file(sides.src(), "2024/a.jpg", b"a");
    write_file(sides.src(), "2024/may/b.jpg", &random_bytes(1, 2 * MIB));
    write_file(sides.src(), "2023/old.jpg", b"old");
    write_file(sides.src(), "2024-bis/c.jpg", b"c");
    write_file(sides.src(), "top.txt", b"top");
    write_file(sides.dst(), "kept.txt", b"kept");

    let summary = run(&sides, subtree(Some("2024"), None)).await;

    assert_all_moved(&summary, 2);
    assert_eq!(tree(sides.dst()), ["a.jpg", "kept.txt", "may", "may/b.jpg"]);
    // The rest of the source stays; the moved subtree's root, emptied, goes.
    assert_eq!(
        tree(sides.src()),
        [
            "2023",
            "2023/old.jpg",
            "2024-bis",
            "2024-bis/c.jpg",
            "top.txt"
        ]
    );
}

#[tokio::test]
async fn a_destination_sub_path_receives_the_whole_source() {
    let sides = Sides::new();
    write_file(sides.src(), "a.jpg", b"a");
    write_file(sides.src(), "may/b.jpg", b"b");
    write_file(sides.dst(), "2023/old.jpg", b"old");
    write_file(sides.dst(), "a.jpg", b"not the same file");

    let summary = run(&sides, subtree(None, Some("photos/2024"))).await;

    assert_all_moved(&summary, 2);
    assert_eq!(read_file(sides.dst(), "photos/2024/a.jpg"), b"a");
    assert_eq!(read_file(sides.dst(), "photos/2024/may/b.jpg"), b"b");
    // Outside the destination's subtree nothing is looked at or changed.
    assert_eq!(read_file(sides.dst(), "a.jpg"), b"not the same file");
    assert_eq!(read_file(sides.dst(), "2023/old.jpg"), b"old");
    // A directory id's root is never removed.
    assert!(tree(sides.src()).is_empty());
    assert!(sides.src().exists());
}

#[tokio::test]
async fn a_partial_file_at_the_target_path_is_resumed() {
    let sides = Sides::new();
    let size = 2 * MIB;
    let data = random_bytes(7, size);
    write_file(sides.src(), "new/f", &data);
    write_file(sides.src(), "new/small", b"small");
    write_file(sides.dst(), "old/.f.part", &data[..size / 2]);
    write_file(sides.dst(), "old/small", b"small");

    let summary = run(&sides, subtree(Some("new"), Some("old"))).await;

    assert_all_moved(&summary, 2);
    let sent = summary.bytes_sent as f64;
    assert!(sent < 0.55 * size as f64, "sent {sent}");
    assert_eq!(read_file(sides.dst(), "old/f"), data);
    assert_eq!(tree(sides.dst()), ["old", "old/f", "old/small"]);
    assert!(tree(sides.src()).is_empty());
}

#[tokio::test]
async fn a_missing_sub_path_moves_nothing_and_a_file_is_refused() {
    let sides = Sides::new();
    write_file(sides.src(), "file", b"f");

    let summary = run(&sides, subtree(Some("nope/deeper"), None)).await;
    assert_all_moved(&summary, 0);
    assert!(summary.failures.is_empty());

    let summary = run(&sides, subtree(Some("file"), None)).await;
    assert_eq!(summary.files_moved, 0);
    let [failure] = summary.failures.as_slice() else {
        panic!("{:?}", summary.failures);
    };
    assert!(failure.path.is_none());
    assert!(
        matches!(&failure.error, MoveError::Service { side: Side::Source, source } if source.code() == ErrorCode::FailedPrecondition),
        "{:?}",
        failure.error
    );
    assert_eq!(tree(sides.src()), ["file"]);
    assert!(tree(sides.dst()).is_empty());
}

#[tokio::test]
async fn excluded_files_stay_and_are_counted_not_failed() {
    let sides = Sides::new();
    write_file(sides.src(), "sub/a.jpg", b"a");
    write_file(sides.src(), "sub/x/b.tmp", b"b");
    write_file(sides.src(), "sub/keep.tmp", b"k");
    write_file(sides.src(), "sub/x/c.txt", b"c");
    write_file(sides.src(), "outside.tmp", b"o");
    let rules = |rules: &[Rule]| MoveOptions {
        filter: FilterRules::new(rules.to_vec()).unwrap(),
        ..options()
    };
    // Matched against the path below the moved root: `/x/` is sub/x.
    let excluding = rules(&[Rule::Exclude("*.tmp".into()), Rule::Exclude("/x/".into())]);

    let summary = run_with(&sides, subtree(Some("sub"), None), &excluding).await;

    assert_all_moved(&summary, 1);
    assert_eq!(summary.files_excluded, 3);
    assert_eq!(tree(sides.dst()), ["a.jpg"]);
    assert_eq!(
        tree(sides.src()),
        [
            "outside.tmp",
            "sub",
            "sub/keep.tmp",
            "sub/x",
            "sub/x/b.tmp",
            "sub/x/c.txt"
        ]
    );

    // Included, then excluded: the first rule that matches decides, and
    // with an include rule what none matches stays.
    let ordered = rules(&[
        Rule::Include("keep.tmp".into()),
        Rule::Exclude("*.tmp".into()),
        Rule::Include("c.txt".into()),
    ]);
    let summary = run_with(&sides, subtree(Some("sub"), None), &ordered).await;
    assert_all_moved(&summary, 2);
    assert_eq!(summary.files_excluded, 1);
    assert_eq!(tree(sides.dst()), ["a.jpg", "keep.tmp", "x", "x/c.txt"]);
    assert_eq!(
        tree(sides.src()),
        ["outside.tmp", "sub", "sub/x", "sub/x/b.tmp"]
    );
}

#[tokio::test]
async fn a_dry_run_plans_each_file_and_changes_nothing() {
    let sides = Sides::new();
    write_file(sides.src(), "sub/new", b"new");
    write_file(sides.src(), "sub/same", b"same");
    write_file(sides.src(), "sub/differs", b"aaaa");
    write_file(sides.src(), "sub/longer", b"longer");
    write_file(sides.src(), "sub/resumed", &random_bytes(1, 1000));
    write_file(sides.src(), "sub/skip.tmp", b"t");
    write_file(sides.dst(), "to/same", b"same");
    write_file(sides.dst(), "to/differs", b"bbbb");
    write_file(sides.dst(), "to/longer", b"short");
    write_file(sides.dst(), "to/.resumed.part", b"partial");
    let before = (contents(sides.src()), contents(sides.dst()));
    let trees = (tree(sides.src()), tree(sides.dst()));
    let options = MoveOptions {
        dry_run: true,
        filter: FilterRules::new(vec![Rule::Exclude("*.tmp".into())]).unwrap(),
        ..options()
    };

    let summary = run_with(&sides, subtree(Some("sub"), Some("to")), &options).await;

    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(summary.files_moved, 0);
    assert_eq!(summary.files_excluded, 1);
    let planned = summary.planned;
    assert_eq!(
        (planned.moved, planned.overwritten, planned.identical),
        (2, 2, 1)
    );
    assert_eq!(planned.files(), 5);
    assert_eq!(planned.bytes, 3 + 4 + 4 + 6 + 1000);
    assert_eq!((contents(sides.src()), contents(sides.dst())), before);
    assert_eq!((tree(sides.src()), tree(sides.dst())), trees);

    // A destination not created yet has nothing, and stays uncreated.
    let missing = sides.dst().join("missing");
    let (src, dst) = (store(sides.src()), store(&missing));
    let summary = move_files(
        &src,
        &dst,
        &[dir().into()],
        &options,
        &NoProgress,
        &Stop::new(),
    )
    .await
    .unwrap();
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(summary.planned.moved, 5);
    assert!(!missing.exists());
}
