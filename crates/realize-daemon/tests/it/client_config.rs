//! The operator's path: `realize keygen`, `realize remote add`, then
//! `realize SRC box:DIR` and `realize://` moves, all from a throwaway HOME.

use std::path::Path;

use tempfile::TempDir;

use crate::util::*;

fn config_text(home: &Path) -> String {
    std::fs::read_to_string(home.join(".config/realize/config.toml")).unwrap()
}

#[tokio::test]
async fn remote_add_checks_the_fingerprint_before_the_daemon_knows_us() {
    let work = TempDir::new().unwrap();
    let home = work.path();
    let keygen = realize_at(home, &["keygen"]).await;
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let before = config_text(home);
    // The daemon knows some other client, not us.
    let stranger = KeyFiles::new(home, "stranger");
    let root = home.join("served");
    std::fs::create_dir(&root).unwrap();
    let daemon = Daemon::start(home, &[("d", &root)], &stranger).await;
    let fingerprint = daemon.key.public_key().fingerprint();

    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let refused = realize_at(
        home,
        &["remote", "add", "box", &daemon.addr, "--fingerprint", wrong],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&fingerprint) && stderr(&refused).contains("nothing written"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(config_text(home), before);
    assert!(!home.join(".config/realize/box.pub.pem").exists());

    // Not on a terminal and no --fingerprint: shown, not trusted.
    let unasked = realize_at(home, &["remote", "add", "box", &daemon.addr]).await;
    assert_eq!(unasked.status.code(), Some(1), "{}", stderr(&unasked));
    assert!(
        stderr(&unasked).contains(&fingerprint),
        "{}",
        stderr(&unasked)
    );
    assert_eq!(config_text(home), before);

    let added = realize_at(
        home,
        &[
            "remote",
            "add",
            "box",
            &daemon.addr,
            "--fingerprint",
            &fingerprint,
        ],
    )
    .await;
    assert!(added.status.success(), "{}", stderr(&added));
    let after = config_text(home);
    assert!(after.starts_with(&before), "{after}");
    assert!(
        after.contains(&format!("[remotes.box]\naddress = \"{}\"", daemon.addr)),
        "{after}"
    );
    let saved = std::fs::read_to_string(home.join(".config/realize/box.pub.pem")).unwrap();
    assert_eq!(saved, daemon.key.public_key().to_pem());
    daemon.stop().await;
}

#[tokio::test]
async fn remote_dir_and_url_sides_push_and_pull() {
    let work = TempDir::new().unwrap();
    let home = work.path();
    let (daemon, root) = home_with_server(home, &["--inline"]).await;
    assert!(
        config_text(home).contains("public_key = \"\"\""),
        "{}",
        config_text(home)
    );

    let pictures = home.join("Pictures");
    sample_tree(&pictures);
    let expected = manifest(&pictures);
    let push = realize_at(home, &["Pictures", "server:box"]).await;
    assert!(push.status.success(), "{}", stderr(&push));
    assert_eq!(manifest(&root), expected);
    assert!(manifest(&pictures).is_empty());

    let pull = realize_at(home, &["server:box", "back"]).await;
    assert!(pull.status.success(), "{}", stderr(&pull));
    assert_eq!(manifest(&home.join("back")), expected);
    assert!(manifest(&root).is_empty());

    // realize://HOST:PORT/DIR trusts the config's key and its remotes' keys.
    let url = format!("realize://{}/box", daemon.addr);
    let push = realize_at(home, &["back", &url]).await;
    assert!(push.status.success(), "{}", stderr(&push));
    assert_eq!(manifest(&root), expected);
    let pull = realize_at(home, &[&url, "again"]).await;
    assert!(pull.status.success(), "{}", stderr(&pull));
    assert_eq!(manifest(&home.join("again")), expected);
    daemon.stop().await;
}
