//! A stock gRPC client in another language (Python `grpcio`) calls a running
//! `realized`, trusting the certificate `realized --print-cert` prints (SPEC
//! §8: certificates keep the daemon callable from any gRPC client): it lists
//! a directory, and writes a verified file with SHA-256 from hashlib or
//! BLAKE3 from PyPI's `blake3`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use tokio::process::Command;

use crate::util::{Daemon, KeyFiles, random_bytes, realized_bin, stderr, stdout, write_file};

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py")
}

fn proto_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

async fn run(program: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(TIMEOUT, output)
        .await
        .unwrap_or_else(|_| panic!("{} hung", program.display()))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// Fails (never skips) when the Python packages are missing, so CI notices.
async fn require_grpcio() {
    let output = run(
        Path::new("python3"),
        &["-c".as_ref(), "import grpc, grpc_tools, blake3".as_ref()],
    )
    .await;
    assert!(
        output.status.success(),
        "python3 cannot import grpcio or blake3: run `pip install grpcio grpcio-tools blake3`\n{}",
        stderr(&output)
    );
}

/// The certificate `realized --print-cert` prints for `daemon`, written to a file.
async fn daemon_cert(daemon: &Daemon, work: &Path) -> PathBuf {
    // Daemon::start writes its config next to its key, as daemonN.toml.
    let config = daemon.key.private.with_extension("toml");
    let output = run(
        &realized_bin(),
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--print-cert".as_ref(),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let pem = stdout(&output);
    assert_eq!(pem, daemon.key.key.certificate_pem().unwrap());
    let path = work.join("daemon.crt");
    std::fs::write(&path, pem).unwrap();
    path
}

/// Writes NAME.crt for a client key, as `realize keygen` would.
fn client_cert(client: &KeyFiles, work: &Path, name: &str) -> PathBuf {
    let path = work.join(format!("{name}.crt"));
    std::fs::write(&path, client.key.certificate_pem().unwrap()).unwrap();
    path
}

/// Runs the Python client against `daemon` with a client key and its
/// certificate: `command` and its arguments (see tests/python/client.py).
async fn python_client(
    daemon: &Daemon,
    daemon_cert: &Path,
    cert: &Path,
    key: &Path,
    command: &[&std::ffi::OsStr],
) -> Output {
    let (script, proto) = (script(), proto_root());
    let mut args: Vec<&std::ffi::OsStr> = vec![
        script.as_os_str(),
        daemon.addr.as_ref(),
        daemon_cert.as_os_str(),
        cert.as_os_str(),
        key.as_os_str(),
        proto.as_os_str(),
    ];
    args.extend_from_slice(command);
    run(Path::new("python3"), &args).await
}

async fn list(daemon: &Daemon, dir: &str, daemon_cert: &Path, cert: &Path, key: &Path) -> Output {
    python_client(
        daemon,
        daemon_cert,
        cert,
        key,
        &["list".as_ref(), dir.as_ref()],
    )
    .await
}

#[tokio::test]
async fn grpcio_client_lists_a_directory() {
    require_grpcio().await;
    let tmp = tempfile::tempdir().unwrap();
    let (root, work) = (tmp.path().join("root"), tmp.path().join("work"));
    std::fs::create_dir_all(&work).unwrap();
    write_file(&root, "top.txt", b"top level\n");
    write_file(&root, "a/b/c/deep.txt", b"deep\n");
    write_file(&root, "a/mid.bin", &random_bytes(3, 70_000));
    write_file(&root, "a/.unfinished.bin.part", b"partial, not listed");

    let client = KeyFiles::new(&work, "client");
    let cert = client_cert(&client, &work, "client");
    let daemon = Daemon::start(&work, &[("docs", &root)], &client).await;
    let trusted = daemon_cert(&daemon, &work).await;

    let output = list(&daemon, "docs", &trusted, &cert, &client.private).await;
    assert!(
        output.status.success(),
        "python client failed: {}\ndaemon log:\n{}",
        stderr(&output),
        daemon.log()
    );
    assert_eq!(
        stdout(&output),
        "a/b/c/deep.txt 5\na/mid.bin 70000\ntop.txt 10\n"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn grpcio_client_with_an_unknown_key_is_refused() {
    require_grpcio().await;
    let tmp = tempfile::tempdir().unwrap();
    let (root, work) = (tmp.path().join("root"), tmp.path().join("work"));
    std::fs::create_dir_all(&work).unwrap();
    write_file(&root, "only.txt", b"x");

    let client = KeyFiles::new(&work, "client");
    let cert = client_cert(&client, &work, "client");
    let intruder = KeyFiles::new(&work, "intruder");
    let intruder_cert = client_cert(&intruder, &work, "intruder");
    let daemon = Daemon::start(&work, &[("docs", &root)], &client).await;
    let trusted = daemon_cert(&daemon, &work).await;

    let refused = list(&daemon, "docs", &trusted, &intruder_cert, &intruder.private).await;
    assert!(
        !refused.status.success(),
        "an unknown key was served: {}",
        stdout(&refused)
    );
    assert_eq!(stdout(&refused), "");
    // Refused for its key, not for some TLS incompatibility.
    assert!(
        daemon
            .wait_for_log("client key is not among the allowed peers")
            .await,
        "the daemon did not refuse the key itself: {}\ndaemon log:\n{}",
        stderr(&refused),
        daemon.log()
    );

    let output = list(&daemon, "docs", &trusted, &cert, &client.private).await;
    assert!(
        output.status.success(),
        "python client failed after the refusal: {}\ndaemon log:\n{}",
        stderr(&output),
        daemon.log()
    );
    assert_eq!(stdout(&output), "only.txt 1\n");
    daemon.stop().await;
}

#[tokio::test]
async fn grpcio_client_writes_a_file_verified_by_sha256_or_blake3() {
    require_grpcio().await;
    let tmp = tempfile::tempdir().unwrap();
    let (root, work) = (tmp.path().join("root"), tmp.path().join("work"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let data = random_bytes(7, 600_000);
    let file = work.join("upload.bin");
    std::fs::write(&file, &data).unwrap();

    let client = KeyFiles::new(&work, "client");
    let cert = client_cert(&client, &work, "client");
    let daemon = Daemon::start(&work, &[("docs", &root)], &client).await;
    let trusted = daemon_cert(&daemon, &work).await;

    for (algorithm, expected) in [
        ("sha256", realize_core::DigestAlgorithm::Sha256),
        ("blake3", realize_core::DigestAlgorithm::Blake3),
    ] {
        let path = format!("{algorithm}/copy.bin");
        let command: [&std::ffi::OsStr; 5] = [
            "upload".as_ref(),
            "docs".as_ref(),
            path.as_ref(),
            file.as_os_str(),
            algorithm.as_ref(),
        ];
        let output = python_client(&daemon, &trusted, &cert, &client.private, &command).await;
        assert!(
            output.status.success(),
            "python upload with {algorithm} failed: {}\ndaemon log:\n{}",
            stderr(&output),
            daemon.log()
        );
        let digest = realize_core::Digest::of(expected, &data);
        assert_eq!(
            stdout(&output),
            format!("{algorithm} {}\n", digest.to_hex())
        );
        assert_eq!(std::fs::read(root.join(&path)).unwrap(), data);
        assert!(
            daemon.wait_for_log(&format!("digest={digest}")).await,
            "no audit line with {digest}:\n{}",
            daemon.log()
        );
    }
    daemon.stop().await;
}
