//! Mutual TLS 1.3 in which each side trusts the other by a pinned ed25519 key, with no CA.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

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

#[derive(Debug, thiserror::Error)]
/// Why a TLS configuration could not be built.
pub enum TlsError {
    #[error("cannot make our certificate")]
    /// This side's certificate could not be made.
    Key(#[from] KeyError),
    #[error("invalid tls configuration")]
    /// rustls refused the configuration.
    Rustls(#[from] rustls::Error),
    #[error("no peer keys given, so every connection would be refused")]
    /// No peer key was given.
    NoPeers,
}

/// The peers a daemon accepts, by key and address, with their peer ids.
///
/// The TLS verifier consults it at every handshake, so an implementation whose
/// content changes (a reloaded config) applies from the next connection on.
pub trait PeerKeys: Send + Sync + fmt::Debug {
    /// The peer id of `key`, if that key may connect from `addr`.
    fn admit(&self, key: &PublicKey, addr: IpAddr) -> Result<String, Refusal>;
}

/// A fixed set of peers, each allowed from anywhere.
impl PeerKeys for HashMap<PublicKey, String> {
    fn admit(&self, key: &PublicKey, _addr: IpAddr) -> Result<String, Refusal> {
        self.get(key).cloned().ok_or(Refusal::UnknownKey)
    }
}

/// Why [`PeerKeys::admit`] refused a key. The client cannot tell these apart: both
/// fail its handshake the same way, so a key outside its networks learns nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No peer has this key.
    UnknownKey,
    /// The key is `peer`'s, but the address is outside the networks it may connect from.
    Network {
        /// The peer id of the key.
        peer: String,
    },
}

/// What the daemon's verifier decided about one connection's client key; the
/// handshake reads it to name the peer, or to log why it was refused.
#[derive(Clone, Debug, Default)]
pub struct Verdict(Arc<OnceLock<(PublicKey, Result<String, Refusal>)>>);

impl Verdict {
    /// The client's key and its peer id or refusal, once its certificate was checked.
    pub fn get(&self) -> Option<&(PublicKey, Result<String, Refusal>)> {
        self.0.get()
    }
}

/// The keys a verifier accepts: fixed (the servers a client trusts), the daemon's
/// current peers, for a client at `addr`, or any key, only to learn it
/// ([`key_capture_config`]).
enum Pins {
    Fixed(HashSet<PublicKey>),
    Any,
    Peers {
        peers: Arc<dyn PeerKeys>,
        addr: IpAddr,
        verdict: Verdict,
    },
}

impl Pins {
    fn contains(&self, key: &PublicKey) -> bool {
        match self {
            Pins::Fixed(keys) => keys.contains(key),
            Pins::Any => true,
            Pins::Peers {
                peers,
                addr,
                verdict,
            } => {
                let admitted = peers.admit(key, *addr);
                let ok = admitted.is_ok();
                // One certificate per handshake: a second check cannot happen.
                let _ = verdict.0.set((key.clone(), admitted));
                ok
            }
        }
    }
}

impl fmt::Debug for Pins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pins::Fixed(keys) => f.debug_tuple("Fixed").field(keys).finish(),
            Pins::Any => f.write_str("Any"),
            Pins::Peers { peers, addr, .. } => f
                .debug_struct("Peers")
                .field("peers", peers)
                .field("addr", addr)
                .finish_non_exhaustive(),
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
    /// Trusts exactly `keys`, with the crypto of `provider`.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>, provider: &CryptoProvider) -> Self {
        Self {
            keys: Pins::Fixed(keys.into_iter().collect()),
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// Pins whatever `peers` allows from `addr` at the time of the handshake, and
    /// leaves its decision in `verdict`.
    fn peers(
        peers: Arc<dyn PeerKeys>,
        addr: IpAddr,
        verdict: Verdict,
        provider: &CryptoProvider,
    ) -> Self {
        Self {
            keys: Pins::Peers {
                peers,
                addr,
                verdict,
            },
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

/// The handshake-signature half of both verifier traits, the same for
/// clients and servers: TLS 1.2 refused, TLS 1.3 signatures by the pinned
/// ed25519 key.
macro_rules! handshake_signatures {
    () => {
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
    };
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

    handshake_signatures!();
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

    handshake_signatures!();
}

/// The daemon's TLS: its certificates, and the peers it accepts as they are at each
/// handshake.
///
/// Each connection gets settings of its own ([`ServerTls::for_client`]), because
/// whether a key may connect depends on the address it connects from, and a
/// certificate verifier only sees the certificate.
#[derive(Clone, Debug)]
pub struct ServerTls {
    provider: Arc<CryptoProvider>,
    identity: Arc<ServerIdentity>,
    peers: Arc<dyn PeerKeys>,
}

impl ServerTls {
    /// A daemon with `key` that accepts the clients `peers` admits.
    ///
    /// An empty set is not refused here, because a live set may be empty for a moment;
    /// the daemon's config validation refuses a config without peers.
    pub fn new(key: &PrivateKey, peers: Arc<dyn PeerKeys>) -> Result<ServerTls, TlsError> {
        let provider = Arc::new(provider());
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
        Ok(ServerTls {
            provider,
            identity,
            peers,
        })
    }

    /// TLS settings for one connection from `addr`, and where its verifier leaves
    /// what it decided about the client's key.
    pub fn for_client(&self, addr: IpAddr) -> Result<(Arc<ServerConfig>, Verdict), TlsError> {
        let verdict = Verdict::default();
        let verifier = Arc::new(PinnedKeys::peers(
            Arc::clone(&self.peers),
            addr,
            verdict.clone(),
            &self.provider,
        ));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::clone(&self.identity) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec()];
        // A resumed TLS 1.3 session skips the client certificate check, so a peer removed
        // from `peers` could come back with an old ticket; every connection does a full
        // handshake instead (one ed25519 signature each way).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok((Arc::new(config), verdict))
    }
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

/// ring's provider with AES-128-GCM preferred: measured with `openssl speed`
/// on this project's machines (AES-NI and VAES), it seals 4.5 GB/s against
/// AES-256-GCM's 4.2 and ChaCha20-Poly1305's 3.7, and every byte of a move
/// goes through it twice (docs/design.md). AES-256 and ChaCha20 stay
/// offered for clients that ask for them; TLS 1.3 lets the client's order
/// decide, which realize's clients and daemons share.
fn provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

/// TLS settings for a client that talks only to `trusted_servers`.
pub fn client_config(
    key: &PrivateKey,
    trusted_servers: impl IntoIterator<Item = PublicKey>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(provider());
    let verifier = Arc::new(pinned(trusted_servers, &provider)?);
    client_with(key, verifier, provider)
}

fn client_with(
    key: &PrivateKey,
    verifier: Arc<dyn ServerCertVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let identity = identity(key, &provider)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// TLS settings for a client that accepts any ed25519 daemon, to learn its key
/// ([`peer_public_key`] after the handshake) before trusting it: `realize remote
/// add` shows that key's fingerprint for the operator to confirm. The daemon's
/// certificate comes before ours is checked, so this works before the daemon
/// knows our key. The daemon still proves it holds the key it shows (its
/// handshake signature is checked); nothing but the key may be taken from such
/// a connection.
pub fn key_capture_config(key: &PrivateKey) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(provider());
    let verifier = Arc::new(PinnedKeys {
        keys: Pins::Any,
        algorithms: provider.signature_verification_algorithms,
    });
    client_with(key, verifier, provider)
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

    #[test]
    fn aes_128_gcm_is_preferred_and_nothing_else_dropped() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(
            suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
        );
    }
    use crate::keys::SERVER_NAME;

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
        fn admit(&self, key: &PublicKey, addr: IpAddr) -> Result<String, Refusal> {
            self.0.read().unwrap().admit(key, addr)
        }
    }

    /// Peers that may connect only from 192.0.2.0/24, which no test connects from.
    #[derive(Debug)]
    struct Elsewhere(HashMap<PublicKey, String>);

    impl PeerKeys for Elsewhere {
        fn admit(&self, key: &PublicKey, addr: IpAddr) -> Result<String, Refusal> {
            let peer = self.0.admit(key, addr)?;
            match addr {
                IpAddr::V4(v4) if v4.octets()[..3] == [192, 0, 2] => Ok(peer),
                _ => Err(Refusal::Network { peer }),
            }
        }
    }

    const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// The settings of a connection from localhost.
    fn server_config(
        key: &PrivateKey,
        peers: Arc<dyn PeerKeys>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        Ok(ServerTls::new(key, peers)?.for_client(LOCALHOST)?.0)
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

    #[tokio::test]
    async fn key_outside_its_networks_fails_like_an_unknown_key() {
        let p = pair();
        let stranger = PrivateKey::generate().unwrap();
        let client = client_config(&p.client, [p.server.public_key()]).unwrap();
        let unknown = client_config(&stranger, [p.server.public_key()]).unwrap();
        let tls = ServerTls::new(
            &p.server,
            Arc::new(Elsewhere(HashMap::from([(
                p.client.public_key(),
                "laptop".to_owned(),
            )]))),
        )
        .unwrap();

        let (config, verdict) = tls.for_client(LOCALHOST).unwrap();
        let (s, outside) = handshake(config, client.clone()).await;
        assert!(s.unwrap_err().contains("ApplicationVerificationFailure"));
        assert_eq!(
            verdict.get(),
            Some(&(
                p.client.public_key(),
                Err(Refusal::Network {
                    peer: "laptop".into()
                })
            ))
        );
        let (config, verdict) = tls.for_client(LOCALHOST).unwrap();
        let (_, stranger_result) = handshake(config, unknown).await;
        assert_eq!(
            verdict.get(),
            Some(&(stranger.public_key(), Err(Refusal::UnknownKey)))
        );
        // The client sees the same failure either way.
        assert_eq!(outside.unwrap_err(), stranger_result.unwrap_err());

        let inside = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
        let (config, verdict) = tls.for_client(inside).unwrap();
        let (s, c) = handshake(config, client).await;
        assert_eq!(s.unwrap(), Some(p.client.public_key()));
        c.unwrap();
        assert_eq!(
            verdict.get(),
            Some(&(p.client.public_key(), Ok("laptop".into())))
        );
    }

    #[test]
    fn empty_pin_set_is_refused() {
        let key = PrivateKey::generate().unwrap();
        assert!(matches!(client_config(&key, []), Err(TlsError::NoPeers)));
    }
}
