//! Ed25519 identity keys in the PEM formats of `openssl genpkey` and `openssl pkey -pubout`.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ED25519, PublicKeyData};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::{PemObject, SectionKind};
use sha2::{Digest, Sha256};

/// The name clients expect and every certificate carries, so standard gRPC clients can
/// connect with a fixed target-name override instead of skipping verification.
pub const SERVER_NAME: &str = "realize";

/// DER prefix of every ed25519 SubjectPublicKeyInfo (RFC 8410); DER is canonical, so
/// prefix plus 32 key bytes is the whole encoding.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The OpenSSH name of the key type, part of what its fingerprint hashes.
const SSH_ED25519: &str = "ssh-ed25519";
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// PKCS#8 v1 (RFC 8410 section 10.3) up to the 32-byte seed.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why a key could not be generated, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}", path.display())]
    /// The key file cannot be read.
    Read {
        /// The path.
        path: PathBuf,
        #[source]
        /// The cause.
        source: std::io::Error,
    },
    #[error("invalid key file {}", path.display())]
    /// The key file does not hold a valid key.
    File {
        /// The path.
        path: PathBuf,
        #[source]
        /// Why.
        source: Box<KeyError>,
    },
    #[error("malformed pem")]
    /// The text is not valid PEM.
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("no {0} block found")]
    /// No PEM block of the kind named.
    NoBlock(&'static str),
    #[error("expected exactly one PUBLIC KEY block, found {0}")]
    /// A public key file must hold exactly one key.
    NotOnePublicKey(usize),
    #[error(
        "found a PRIVATE KEY block where a PUBLIC KEY was expected \
         (derive it with `openssl pkey -in KEY -pubout`)"
    )]
    /// A private key given where a public key was expected.
    PrivateWherePublicExpected,
    #[error("expected an ed25519 key, found {found}")]
    /// The key is of another algorithm.
    NotEd25519 {
        /// The algorithm found.
        found: &'static str,
    },
    #[error("invalid ed25519 private key")]
    /// The private key is not a valid ed25519 key.
    InvalidPrivateKey(#[source] rcgen::Error),
    #[error("invalid ed25519 public key")]
    /// The public key is not a valid ed25519 key.
    InvalidPublicKey,
    #[error("cannot generate an ed25519 key")]
    /// The system could not generate a key.
    Generate(#[source] rustls::Error),
    #[error("cannot make a self-signed certificate")]
    /// The self-signed certificate could not be made.
    Certificate(#[source] rcgen::Error),
}

/// An ed25519 private key (PKCS#8) together with its public half.
pub struct PrivateKey {
    key_pair: KeyPair,
    public: PublicKey,
}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        // Built from a seed rather than by ring's generator, whose PKCS#8 v2 output
        // OpenSSL cannot read; v1 is what `openssl genpkey` writes.
        let mut seed = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut seed)
            .map_err(|e| KeyError::Generate(e.into()))?;
        let mut der = Vec::with_capacity(ED25519_PKCS8_V1_PREFIX.len() + seed.len());
        der.extend_from_slice(&ED25519_PKCS8_V1_PREFIX);
        der.extend_from_slice(&seed);
        Self::from_pkcs8_der(der)
    }

    /// Reads the first private key block; other blocks (certificates, public keys) are skipped.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        Self::from_pem_bytes(pem.as_bytes())
    }

    /// Reads a private key file; one that others than its owner may read or write is
    /// still loaded, with a warning, as ssh does for its keys.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = read(path)?;
        let key = Self::from_pem_bytes(&bytes).map_err(|e| in_file(path, e))?;
        if let Some(mode) = open_to_others(path) {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:04o}"),
                "private key file {} is accessible by others (mode {mode:04o}): run chmod 600 {}",
                path.display(),
                path.display()
            );
        }
        Ok(key)
    }

    fn from_pem_bytes(pem: &[u8]) -> Result<Self, KeyError> {
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
            let (kind, der) = section.map_err(KeyError::Pem)?;
            match kind {
                SectionKind::PrivateKey => return Self::from_pkcs8_der(der),
                SectionKind::RsaPrivateKey => {
                    return Err(KeyError::NotEd25519 {
                        found: "an RSA key",
                    });
                }
                SectionKind::EcPrivateKey => {
                    return Err(KeyError::NotEd25519 { found: "an EC key" });
                }
                _ => {}
            }
        }
        Err(KeyError::NoBlock("PRIVATE KEY"))
    }

    fn from_pkcs8_der(der: Vec<u8>) -> Result<Self, KeyError> {
        let pkcs8 = PrivatePkcs8KeyDer::from(der);
        match KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ED25519) {
            Ok(key_pair) => Ok(Self::from_key_pair(key_pair)),
            // ring only says "rejected"; naming the algorithm tells the user what to fix.
            Err(e) => match other_algorithm(pkcs8.secret_pkcs8_der()) {
                Some(found) => Err(KeyError::NotEd25519 { found }),
                None => Err(KeyError::InvalidPrivateKey(e)),
            },
        }
    }

    fn from_key_pair(key_pair: KeyPair) -> Self {
        let public = PublicKey(key_pair.subject_public_key_info());
        Self { key_pair, public }
    }

    /// The key as a PKCS#8 `PRIVATE KEY` PEM block.
    pub fn to_pem(&self) -> String {
        self.key_pair.serialize_pem()
    }

    /// Its public half.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    pub(crate) fn pkcs8_der(&self) -> &[u8] {
        self.key_pair.serialized_der()
    }

    /// A self-signed certificate for this key; peers trust it by its key alone, so
    /// the name only matters to standard gRPC clients that check it.
    pub fn certificate_der(&self) -> Result<Vec<u8>, KeyError> {
        Ok(self.certificate()?.der().to_vec())
    }

    /// The self-signed certificate of this key, as PEM, for clients that want to pin it.
    pub fn certificate_pem(&self) -> Result<String, KeyError> {
        Ok(self.certificate()?.pem())
    }

    /// An ECDSA P-256 certificate for a fresh key, signed by this ed25519 key, and
    /// that key (PKCS#8 DER).
    ///
    /// BoringSSL, and so grpcio and other gRPC stacks built on it, cannot verify
    /// ed25519 *handshake* signatures, though it verifies ed25519 *certificate*
    /// signatures. A daemon presents this certificate, chained to its own, to such
    /// clients; they trust it through the daemon's self-signed certificate.
    pub fn delegated_p256_certificate(&self) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
        let leaf_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(KeyError::Certificate)?;
        let issuer_params = Self::params()?;
        let issuer = rcgen::Issuer::from_params(&issuer_params, &self.key_pair);
        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_owned()]).map_err(KeyError::Certificate)?;
        // A leaf named like its issuer looks self-signed to OpenSSL and BoringSSL.
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("{SERVER_NAME} tls"));
        params.distinguished_name = name;
        let cert = params
            .signed_by(&leaf_key, &issuer)
            .map_err(KeyError::Certificate)?;
        Ok((cert.der().to_vec(), leaf_key.serialize_der()))
    }

    /// The identity certificate is also a CA (path length 0) so that it can sign
    /// [`Self::delegated_p256_certificate`] for clients that require CA issuers.
    fn params() -> Result<CertificateParams, KeyError> {
        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_owned()]).map_err(KeyError::Certificate)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, SERVER_NAME);
        params.distinguished_name = name;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyCertSign,
        ];
        Ok(params)
    }

    fn certificate(&self) -> Result<rcgen::Certificate, KeyError> {
        Self::params()?
            .self_signed(&self.key_pair)
            .map_err(KeyError::Certificate)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// An ed25519 public key as SubjectPublicKeyInfo DER.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey(Vec<u8>);

impl PublicKey {
    /// Accepts exactly one key, so a file meant for one identity cannot silently carry two.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let mut keys = Self::parse_pem_all(pem)?;
        match keys.len() {
            1 => Ok(keys.remove(0)),
            n => Err(KeyError::NotOnePublicKey(n)),
        }
    }

    /// Every `PUBLIC KEY` block of `pem`.
    pub fn parse_pem_all(pem: &str) -> Result<Vec<PublicKey>, KeyError> {
        Self::parse_pem_bytes(pem.as_bytes())
    }

    /// Every `PUBLIC KEY` block of the file at `path`.
    pub fn load_all(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
        let bytes = read(path)?;
        Self::parse_pem_bytes(&bytes).map_err(|e| in_file(path, e))
    }

    fn parse_pem_bytes(pem: &[u8]) -> Result<Vec<PublicKey>, KeyError> {
        let mut keys = Vec::new();
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
            let (kind, der) = section.map_err(KeyError::Pem)?;
            match kind {
                SectionKind::PublicKey => keys.push(Self::from_spki_der(der)?),
                // A private key in a peers file is a leaked secret and surely a mistake.
                SectionKind::PrivateKey
                | SectionKind::RsaPrivateKey
                | SectionKind::EcPrivateKey => return Err(KeyError::PrivateWherePublicExpected),
                _ => {}
            }
        }
        if keys.is_empty() {
            return Err(KeyError::NoBlock("PUBLIC KEY"));
        }
        Ok(keys)
    }

    /// The key of a DER SubjectPublicKeyInfo, if it is ed25519.
    pub fn from_spki_der(der: Vec<u8>) -> Result<Self, KeyError> {
        if der.len() == ED25519_SPKI_PREFIX.len() + 32 && der.starts_with(&ED25519_SPKI_PREFIX) {
            return Ok(Self(der));
        }
        match other_algorithm(&der) {
            Some(found) => Err(KeyError::NotEd25519 { found }),
            None => Err(KeyError::InvalidPublicKey),
        }
    }

    /// Its DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.0
    }

    /// The key as a `PUBLIC KEY` PEM block.
    pub fn to_pem(&self) -> String {
        let pem = pem::Pem::new("PUBLIC KEY", self.0.clone());
        pem::encode_config(
            &pem,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The key in OpenSSH's wire form: `string "ssh-ed25519"`, `string key`.
    fn ssh_blob(&self) -> Vec<u8> {
        let raw = &self.0[ED25519_SPKI_PREFIX.len()..];
        let mut blob = Vec::with_capacity(4 + SSH_ED25519.len() + 4 + raw.len());
        for field in [SSH_ED25519.as_bytes(), raw] {
            blob.extend_from_slice(&(field.len() as u32).to_be_bytes());
            blob.extend_from_slice(field);
        }
        blob
    }

    /// The fingerprint `ssh-keygen -l` prints for the same key: `SHA256:` and the
    /// unpadded base64 of the SHA-256 of its OpenSSH wire form, so operators compare
    /// the form they know.
    pub fn fingerprint(&self) -> String {
        use base64::Engine;
        let digest = Sha256::digest(self.ssh_blob());
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublicKey")
            .field(&format_args!("{}", self.fingerprint()))
            .finish()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The permission bits of `path` if its group or others have any access to it.
pub fn open_to_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

fn in_file(path: &Path, error: KeyError) -> KeyError {
    KeyError::File {
        path: path.to_owned(),
        source: Box::new(error),
    }
}

/// Names the algorithm of a DER key that is not ed25519, by the algorithm OID it carries;
/// `None` when it does say ed25519 (so it is merely corrupt) or nothing recognisable.
fn other_algorithm(der: &[u8]) -> Option<&'static str> {
    const KNOWN: [(&[u8], &str); 4] = [
        // rsaEncryption 1.2.840.113549.1.1.1
        (
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ],
            "an RSA key",
        ),
        // id-ecPublicKey 1.2.840.10045.2.1
        (
            &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
            "an EC key",
        ),
        (&[0x06, 0x03, 0x2b, 0x65, 0x71], "an ed448 key"),
        (&[0x06, 0x03, 0x2b, 0x65, 0x6e], "an x25519 key"),
    ];
    let contains = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
    if contains(&ED25519_OID) {
        return None;
    }
    KNOWN
        .iter()
        .find(|(oid, _)| contains(oid))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn openssl(dir: &Path, args: &[&str]) {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?} failed");
    }

    #[test]
    fn private_key_pem_round_trip() {
        let key = PrivateKey::generate().unwrap();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(again.to_pem(), pem);
    }

    #[test]
    fn key_files_open_to_others_are_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(&path, PrivateKey::generate().unwrap().to_pem()).unwrap();
        for (mode, expected) in [
            (0o600, None),
            (0o400, None),
            (0o640, Some(0o640)),
            (0o604, Some(0o604)),
            (0o644, Some(0o644)),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(open_to_others(&path), expected, "{mode:o}");
            // Loose permissions warn; they do not stop the key from loading.
            PrivateKey::load(&path).unwrap();
        }
    }

    #[test]
    fn public_key_pem_round_trip_and_fingerprint() {
        let key = PrivateKey::generate().unwrap().public_key();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(PublicKey::from_pem(&pem).unwrap(), key);
        let fp = key.fingerprint();
        // 32 bytes in unpadded base64.
        assert_eq!(fp.len(), "SHA256:".len() + 43);
        assert!(fp.starts_with("SHA256:"));
        assert_eq!(format!("{key:?}"), format!("PublicKey({fp})"));
    }

    #[test]
    fn fingerprint_is_the_one_ssh_keygen_prints() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap().public_key();
        let line = format!(
            "{SSH_ED25519} {} test\n",
            base64::engine::general_purpose::STANDARD.encode(key.ssh_blob())
        );
        std::fs::write(dir.path().join("k.pub"), line).unwrap();
        let out = match Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f", "k.pub"])
            .current_dir(dir.path())
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("ssh-keygen is not installed: skipped");
                return;
            }
            Err(e) => panic!("cannot run ssh-keygen: {e}"),
        };
        assert!(out.status.success(), "{out:?}");
        // "256 SHA256:... test (ED25519)"
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text.split(' ').nth(1),
            Some(key.fingerprint().as_str()),
            "{text}"
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = PrivateKey::generate().unwrap();
        let debug = format!("{key:?}");
        let pem = key.to_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!debug.contains(&body), "{debug}");
        assert!(!debug.contains(&hex::encode(key.pkcs8_der())), "{debug}");
        assert!(debug.contains(&key.public_key().fingerprint()), "{debug}");
    }

    #[test]
    fn several_public_keys_in_one_file() {
        let a = PrivateKey::generate().unwrap().public_key();
        let b = PrivateKey::generate().unwrap().public_key();
        let pem = format!("# peers\n{}\n{}", a.to_pem(), b.to_pem());
        assert_eq!(PublicKey::parse_pem_all(&pem).unwrap(), vec![a, b]);
        let err = PublicKey::from_pem(&pem).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected exactly one PUBLIC KEY block, found 2"
        );
    }

    #[test]
    fn no_public_key_is_an_error() {
        let err = PublicKey::parse_pem_all("nothing here\n").unwrap_err();
        assert_eq!(err.to_string(), "no PUBLIC KEY block found");
    }

    #[test]
    fn private_key_in_peers_file_is_rejected() {
        let pem = PrivateKey::generate().unwrap().to_pem();
        let err = PublicKey::parse_pem_all(&pem).unwrap_err();
        assert!(matches!(err, KeyError::PrivateWherePublicExpected), "{err}");
    }

    #[test]
    fn openssl_keys_are_read() {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            &["genpkey", "-algorithm", "ed25519", "-out", "k.pem"],
        );
        openssl(
            dir.path(),
            &["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub.pem"],
        );
        let private = PrivateKey::load(&dir.path().join("k.pem")).unwrap();
        let public = PublicKey::load_all(&dir.path().join("k.pub.pem")).unwrap();
        assert_eq!(public, vec![private.public_key()]);
        // Our encoding must be byte-identical to openssl's, so files can be compared or diffed.
        let openssl_pub = std::fs::read_to_string(dir.path().join("k.pub.pem")).unwrap();
        assert_eq!(private.public_key().to_pem(), openssl_pub);
        let openssl_private = std::fs::read_to_string(dir.path().join("k.pem")).unwrap();
        assert_eq!(private.to_pem(), openssl_private);
        // The certificate must be usable with this key, including openssl's PKCS#8 v1 form.
        private.certificate_der().unwrap();
    }

    #[test]
    fn our_keys_are_read_by_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap();
        std::fs::write(dir.path().join("k.pem"), key.to_pem()).unwrap();
        openssl(
            dir.path(),
            &["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub.pem"],
        );
        let public = PublicKey::load_all(&dir.path().join("k.pub.pem")).unwrap();
        assert_eq!(public, vec![key.public_key()]);
        std::fs::write(dir.path().join("cert.pem"), key.certificate_pem().unwrap()).unwrap();
        let out = Command::new("openssl")
            .args([
                "x509",
                "-in",
                "cert.pem",
                "-noout",
                "-ext",
                "subjectAltName",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("DNS:realize"), "{text}");
    }

    #[test]
    fn rsa_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            &[
                "genpkey",
                "-algorithm",
                "rsa",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "rsa.pem",
            ],
        );
        openssl(
            dir.path(),
            &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub.pem"],
        );
        let path = dir.path().join("rsa.pem");
        let err = PrivateKey::load(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid key file {}", path.display())
        );
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(cause, "expected an ed25519 key, found an RSA key");

        let err = PublicKey::load_all(&dir.path().join("rsa.pub.pem")).unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(cause, "expected an ed25519 key, found an RSA key");
    }

    #[test]
    fn garbage_is_rejected() {
        let err = PrivateKey::from_pem("not a key").unwrap_err();
        assert_eq!(err.to_string(), "no PRIVATE KEY block found");

        let err =
            PrivateKey::from_pem("-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(matches!(err, KeyError::Pem(_)), "{err:?}");

        let err =
            PrivateKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(matches!(err, KeyError::InvalidPrivateKey(_)), "{err:?}");

        let err =
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .unwrap_err();
        assert!(matches!(err, KeyError::InvalidPublicKey), "{err:?}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.pem");
        let err = PrivateKey::load(&path).unwrap_err();
        assert!(err.to_string().contains("absent.pem"), "{err}");
        let err = PublicKey::load_all(&path).unwrap_err();
        assert!(err.to_string().contains("absent.pem"), "{err}");
    }
}
