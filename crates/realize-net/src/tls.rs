//! Mutual TLS 1.3 in which each side trusts the other by a pinned ed25519 key, with no CA.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    ServerConfig, SignatureScheme,
};

use crate::keys::{KeyError, PrivateKey, PublicKey};

/// The name clients expect and every certificate carries, so standard gRPC clients can
/// connect with a fixed target-name override instead of skipping verification.
pub const SERVER_NAME: &str = "realize";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make our certificate")]
    Key(#[from] KeyError),
    #[error("invalid tls configuration")]
    Rustls(#[from] rustls::Error),
    #[error("no peer keys given, so every connection would be refused")]
    NoPeers,
}

/// The peers a daemon accepts, by key, with their peer ids.
///
/// The TLS verifier and the handshake consult it for every new connection, so an
/// implementation whose content changes (a reloaded config) applies from the next
/// connection on, and both always see the same version.
pub trait PeerKeys: Send + Sync + fmt::Debug {
    /// The peer id of `key`, if that key may connect.
    fn peer_id(&self, key: &PublicKey) -> Option<String>;
}

/// A fixed set of peers.
impl PeerKeys for HashMap<PublicKey, String> {
    fn peer_id(&self, key: &PublicKey) -> Option<String> {
        self.get(key).cloned()
    }
}

/// The keys a verifier accepts: fixed (the servers a client trusts) or the daemon's
/// current peers.
enum Pins {
    Fixed(HashSet<PublicKey>),
    Peers(Arc<dyn PeerKeys>),
}

impl Pins {
    fn contains(&self, key: &PublicKey) -> bool {
        match self {
            Pins::Fixed(keys) => keys.contains(key),
            Pins::Peers(peers) => peers.peer_id(key).is_some(),
        }
    }
}

impl fmt::Debug for Pins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pins::Fixed(keys) => f.debug_tuple("Fixed").field(keys).finish(),
            Pins::Peers(peers) => f.debug_tuple("Peers").field(peers).finish(),
        }
    }
}

/// Accepts a peer whose end-entity certificate carries one of the pinned keys.
///
/// Validity dates, names and chains are deliberately ignored: the key is the whole trust
/// decision, and self-signed certificates would otherwise need a CA or clock agreement.
pub struct PinnedKeys {
    keys: Pins,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedKeys {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>, provider: &CryptoProvider) -> Self {
        Self {
            keys: Pins::Fixed(keys.into_iter().collect()),
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// Pins whatever `peers` holds at the time of each handshake.
    pub fn peers(peers: Arc<dyn PeerKeys>, provider: &CryptoProvider) -> Self {
        Self {
            keys: Pins::Peers(peers),
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let key = certificate_key(end_entity)?;
        if self.keys.contains(&key) {
            Ok(())
        } else {
            // The handshake error cannot carry the key, so this is the only place to see it.
            tracing::debug!(key = %key, "peer key is not pinned");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl fmt::Debug for PinnedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedKeys")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("tls 1.2 is not supported".to_owned())
}

impl ClientCertVerifier for PinnedKeys {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ServerCertVerifier for PinnedKeys {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// TLS settings for a daemon that accepts only the clients in `peers`, as they are at
/// each handshake.
///
/// An empty set is not refused here, because a live set may be empty for a moment; the
/// daemon's config validation refuses a config without peers.
pub fn server_config(
    key: &PrivateKey,
    peers: Arc<dyn PeerKeys>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedKeys::peers(peers, &provider));
    let (leaf, leaf_key) = key.delegated_p256_certificate()?;
    let identity = Arc::new(ServerIdentity {
        ed25519: identity(key, &provider)?,
        p256: Arc::new(CertifiedKey::from_der(
            vec![
                CertificateDer::from(leaf),
                CertificateDer::from(key.certificate_der()?),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key)),
            &provider,
        )?),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // A resumed TLS 1.3 session skips the client certificate check, so a peer removed
    // from `peers` could come back with an old ticket; every connection does a full
    // handshake instead (one ed25519 signature each way).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The daemon's certificates: its ed25519 identity for clients that can verify
/// ed25519 handshake signatures (every realize client), else a P-256
/// certificate signed by that identity (grpcio and other BoringSSL clients).
#[derive(Debug)]
struct ServerIdentity {
    ed25519: Arc<SingleCertAndKey>,
    p256: Arc<CertifiedKey>,
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello
            .signature_schemes()
            .contains(&SignatureScheme::ED25519)
        {
            self.ed25519.resolve(hello)
        } else {
            Some(Arc::clone(&self.p256))
        }
    }
}

/// TLS settings for a client that talks only to `trusted_servers`.
pub fn client_config(
    key: &PrivateKey,
    trusted_servers: impl IntoIterator<Item = PublicKey>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(pinned(trusted_servers, &provider)?);
    let identity = identity(key, &provider)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The key of the peer's end-entity certificate, once the handshake has verified it.
pub fn peer_public_key(conn: &CommonState) -> Option<PublicKey> {
    let cert = conn.peer_certificates()?.first()?;
    certificate_key(cert).ok()
}

fn pinned(
    keys: impl IntoIterator<Item = PublicKey>,
    provider: &CryptoProvider,
) -> Result<PinnedKeys, TlsError> {
    let keys: HashSet<PublicKey> = keys.into_iter().collect();
    if keys.is_empty() {
        return Err(TlsError::NoPeers);
    }
    Ok(PinnedKeys::new(keys, provider))
}

fn identity(
    key: &PrivateKey,
    provider: &CryptoProvider,
) -> Result<Arc<SingleCertAndKey>, TlsError> {
    let cert = CertificateDer::from(key.certificate_der()?);
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let certified = CertifiedKey::from_der(vec![cert], der, provider)?;
    Ok(Arc::new(SingleCertAndKey::from(certified)))
}

fn certificate_key(cert: &CertificateDer<'_>) -> Result<PublicKey, rustls::Error> {
    let spki = ParsedCertificate::try_from(cert)?.subject_public_key_info();
    // A non-ed25519 certificate cannot match a pin, so it fails like any unknown key.
    PublicKey::from_spki_der(spki.as_ref().to_vec()).map_err(|_| {
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    struct Pair {
        server: PrivateKey,
        client: PrivateKey,
    }

    fn pair() -> Pair {
        Pair {
            server: PrivateKey::generate().unwrap(),
            client: PrivateKey::generate().unwrap(),
        }
    }

    /// A fixed peer set naming each key `peerN`.
    fn peers(keys: impl IntoIterator<Item = PublicKey>) -> Arc<dyn PeerKeys> {
        Arc::new(
            keys.into_iter()
                .enumerate()
                .map(|(n, key)| (key, format!("peer{n}")))
                .collect::<HashMap<_, _>>(),
        )
    }

    /// A peer set that can be replaced while the server config is in use, like a
    /// reloaded daemon config.
    #[derive(Debug, Default)]
    struct Swappable(std::sync::RwLock<HashMap<PublicKey, String>>);

    impl PeerKeys for Swappable {
        fn peer_id(&self, key: &PublicKey) -> Option<String> {
            self.0.read().unwrap().get(key).cloned()
        }
    }

    /// Runs one handshake over an in-memory pipe and returns both sides' outcome,
    /// each including a one-byte exchange so late TLS 1.3 client rejection shows up.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (
        Result<Option<PublicKey>, String>,
        Result<Option<PublicKey>, String>,
    ) {
        let (a, b) = tokio::io::duplex(16 * 1024);
        let server_side = async move {
            let mut tls = TlsAcceptor::from(server)
                .accept(a)
                .await
                .map_err(|e| e.to_string())?;
            let peer = peer_public_key(tls.get_ref().1);
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            tls.write_all(&byte).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok(peer)
        };
        let client_side = async move {
            let name = ServerName::try_from(SERVER_NAME).unwrap();
            let mut tls = TlsConnector::from(client)
                .connect(name, b)
                .await
                .map_err(|e| e.to_string())?;
            let peer = peer_public_key(tls.get_ref().1);
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            Ok(peer)
        };
        tokio::join!(server_side, client_side)
    }

    #[tokio::test]
    async fn pinned_keys_handshake() {
        let p = pair();
        let server = server_config(&p.server, peers([p.client.public_key()])).unwrap();
        let client = client_config(&p.client, [p.server.public_key()]).unwrap();
        let (s, c) = handshake(server, client).await;
        assert_eq!(s.unwrap(), Some(p.client.public_key()));
        assert_eq!(c.unwrap(), Some(p.server.public_key()));
    }

    #[tokio::test]
    async fn wrong_server_pin_fails() {
        let p = pair();
        let other = PrivateKey::generate().unwrap();
        let server = server_config(&p.server, peers([p.client.public_key()])).unwrap();
        let client = client_config(&p.client, [other.public_key()]).unwrap();
        let (s, c) = handshake(server, client).await;
        let c = c.unwrap_err();
        assert!(c.contains("ApplicationVerificationFailure"), "{c}");
        assert!(s.is_err());
    }

    #[tokio::test]
    async fn unknown_client_fails() {
        let p = pair();
        let other = PrivateKey::generate().unwrap();
        let server = server_config(&p.server, peers([other.public_key()])).unwrap();
        let client = client_config(&p.client, [p.server.public_key()]).unwrap();
        let (s, c) = handshake(server, client).await;
        let s = s.unwrap_err();
        assert!(s.contains("ApplicationVerificationFailure"), "{s}");
        assert!(c.is_err());
    }

    #[tokio::test]
    async fn swapped_peer_set_applies_to_the_next_handshake() {
        let p = pair();
        let newcomer = PrivateKey::generate().unwrap();
        let set = Arc::new(Swappable::default());
        set.0
            .write()
            .unwrap()
            .insert(p.client.public_key(), "old".into());
        let server = server_config(&p.server, set.clone()).unwrap();
        let client = client_config(&p.client, [p.server.public_key()]).unwrap();
        let other = client_config(&newcomer, [p.server.public_key()]).unwrap();

        let (s, c) = handshake(server.clone(), client.clone()).await;
        assert_eq!(s.unwrap(), Some(p.client.public_key()));
        c.unwrap();
        assert!(handshake(server.clone(), other.clone()).await.0.is_err());

        *set.0.write().unwrap() = HashMap::from([(newcomer.public_key(), "new".into())]);
        let (s, _) = handshake(server.clone(), client).await;
        let s = s.unwrap_err();
        assert!(s.contains("ApplicationVerificationFailure"), "{s}");
        let (s, c) = handshake(server, other).await;
        assert_eq!(s.unwrap(), Some(newcomer.public_key()));
        c.unwrap();
    }

    #[test]
    fn empty_pin_set_is_refused() {
        let key = PrivateKey::generate().unwrap();
        assert!(matches!(client_config(&key, []), Err(TlsError::NoPeers)));
    }
}
