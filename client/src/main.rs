//! `hsmgate-client`: the command-line client.
//!
//! Loads the client config, connects through a gateway (see the SDK in
//! `lib.rs`) and runs one HSM operation. Output goes to stdout; on failure
//! one line goes to stderr and the exit code says what kind of failure it
//! was: 1 the operation failed at the HSM (or `verify` found the signature
//! invalid), 2 usage or config, 3 denied, 4 unavailable.
#![forbid(unsafe_code)]

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hsmgate_client::error::{EXIT_OPERATION_FAILED, EXIT_USAGE};
use hsmgate_client::{
    ClientConfig, ClientError, ConnectOptions, KeyInfo, KeyType, ObjectInfo, SignScheme,
    StaticKeypair, Transport,
};
use hsmgate_log::LogFormat;

/// Largest input file read for `--file` (the protocol's data limit).
const MAX_INPUT: u64 = hsmgate_wire::ops::MAX_DATA as u64;

#[derive(Parser, Debug)]
#[command(
    name = "hsmgate-client",
    version,
    about = "Use an HSM through an hsmgate gateway",
    after_help = "Exit codes:\n  \
        0  success (verify: valid)\n  \
        1  the HSM ran the operation and returned an error status (verify: invalid)\n  \
        2  usage or configuration error: arguments, config, key or input file\n  \
        3  denied: not authorized, address not allowed, handshake failed, or a gateway or\n     \
        HSM key that is not pinned (the message shows the key presented)\n  \
        4  unavailable: retryable refusals, transport failures, timeouts, every gateway\n     \
        address tried"
)]
struct Cli {
    /// Client config file (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Service key pair file to use instead of the config's identity_file.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Local address to connect from.
    #[arg(long, value_name = "ADDR")]
    bind: Option<IpAddr>,
    /// tcp or quic (UDP, the same address); overrides the config's
    /// `transport`.
    #[arg(long, value_name = "TRANSPORT", value_parser = parse_transport)]
    transport: Option<Transport>,
    /// Log format on stderr (level from RUST_LOG, default warn).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that an HSM answers through the gateway.
    Ping,
    /// Print N random bytes from the HSM, in hex.
    Random {
        /// How many bytes, 1 to 4096.
        #[arg(value_parser = clap::value_parser!(u16).range(1..=4096))]
        n: u16,
    },
    /// Generate a key in the partition (ed25519, p256, p384, aes256,
    /// rsa2048, rsa3072, rsa4096).
    Keygen {
        /// The key type: ed25519, p256, p384, aes256, rsa2048, rsa3072 or
        /// rsa4096.
        #[arg(long = "type", value_name = "TYPE", value_parser = parse_key_type)]
        kind: KeyType,
        /// The new key's label: 1 to 64 of [A-Za-z0-9._-], unique in the
        /// partition.
        #[arg(long)]
        label: String,
        /// The key's id (PKCS#11 `CKA_ID`), in hex.
        #[arg(long, value_parser = parse_hex)]
        id: Option<Bytes>,
    },
    /// List the keys of the partition.
    List,
    /// Show one key: label, type, id and public key.
    Info {
        /// The key's label (as `list` shows it).
        #[arg(long)]
        key: String,
    },
    /// Delete a key. There is no undo.
    Delete {
        /// The key's label (as `list` shows it).
        #[arg(long)]
        key: String,
    },
    /// Set a key's id (PKCS#11 `CKA_ID`), which pairs it with a certificate.
    SetId {
        /// The key's label (as `list` shows it).
        #[arg(long)]
        key: String,
        /// The id, in hex (empty string: no id).
        #[arg(long, value_parser = parse_hex)]
        id: Bytes,
    },
    /// Sign a digest computed elsewhere; prints the signature in hex.
    SignDigest {
        /// The key's label (as `list` shows it).
        #[arg(long)]
        key: String,
        /// ecdsa, rsa-pkcs1-sha256/384/512, rsa-pss-sha256/384/512 or
        /// rsa-pkcs1-raw (the digest is a DigestInfo, padded as given).
        #[arg(long, value_parser = parse_scheme)]
        scheme: SignScheme,
        /// The digest, in hex.
        #[arg(long, value_parser = parse_hex)]
        digest: Bytes,
    },
    /// Certificates stored in the partition (X.509, DER).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Sign data; prints the signature in hex.
    Sign {
        /// The key's label (as `list` shows it).
        #[arg(long)]
        key: String,
        #[command(flatten)]
        input: Input,
    },
    /// Verify a signature; prints valid (exit 0) or invalid (exit 1).
    Verify {
        /// The key's label (as `list` shows it).
        #[arg(long)]
        key: String,
        #[command(flatten)]
        input: Input,
        /// The signature, in hex.
        #[arg(long, value_parser = parse_hex)]
        signature: Bytes,
    },
    /// Encrypt data with an AES key; prints the ciphertext in hex.
    Encrypt {
        /// The key's label (as `list` shows it).
        #[arg(long)]
        key: String,
        #[command(flatten)]
        input: Input,
        /// Additional authenticated data, in hex.
        #[arg(long, value_parser = parse_hex)]
        aad: Option<Bytes>,
    },
    /// Decrypt data with an AES key; prints the plaintext in hex.
    Decrypt {
        /// The key's label (as `list` shows it).
        #[arg(long)]
        key: String,
        #[command(flatten)]
        input: Input,
        /// Additional authenticated data, in hex.
        #[arg(long, value_parser = parse_hex)]
        aad: Option<Bytes>,
    },
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Store a certificate (DER) under a label, with the id of its key.
    Put {
        /// The certificate's label: 1 to 64 of [A-Za-z0-9._-].
        #[arg(long)]
        label: String,
        /// The id, in hex: the same as the private key's, so that PKCS#11
        /// applications pair them.
        #[arg(long, value_parser = parse_hex)]
        id: Bytes,
        /// The certificate file, DER (`openssl x509 -outform DER`).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// List the stored certificates: label, id, size.
    List,
    /// Write one certificate (DER) to a file, or as hex to stdout.
    Get {
        /// The certificate's label.
        #[arg(long)]
        label: String,
        /// Write the DER here instead of hex to stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Delete a certificate.
    Delete {
        /// The certificate's label.
        #[arg(long)]
        label: String,
    },
}

/// Bytes given in hex on the command line (a newtype so clap does not take
/// `Vec<u8>` for a list of values).
#[derive(Clone, Debug)]
struct Bytes(Vec<u8>);

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Input {
    /// The data, in hex.
    #[arg(long, value_parser = parse_hex)]
    data: Option<Bytes>,
    /// Read the data from a file.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

fn parse_hex(s: &str) -> Result<Bytes, String> {
    hex::decode(s.trim())
        .map(Bytes)
        .map_err(|e| format!("not hex: {e}"))
}

fn parse_key_type(s: &str) -> Result<KeyType, String> {
    s.parse()
}

fn parse_scheme(s: &str) -> Result<SignScheme, String> {
    s.parse()
}

/// An error of the command line itself, before any connection (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    // Clap exits 2 on a usage error by itself.
    let cli = Cli::parse();
    hsmgate_log::init(cli.log_format, "warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hsmgate-client: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // A ClientError already names its cause; other errors (local
            // files) carry it in their context chain.
            if e.downcast_ref::<ClientError>().is_some() {
                eprintln!("hsmgate-client: {e}");
            } else {
                eprintln!("hsmgate-client: {}", hsmgate_log::error_chain(e.as_ref()));
            }
            ExitCode::from(exit_code_of(&e))
        }
    }
}

fn exit_code_of(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<ClientError>())
        .map_or(EXIT_USAGE, ClientError::exit_code)
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    s.parse()
}

/// Run the command; the value is the exit code on success (1 for `verify`
/// with an invalid signature).
async fn run(cli: Cli) -> anyhow::Result<u8> {
    let passphrase = passphrase_from_env()?;
    let mut config =
        ClientConfig::load_unlocked(&cli.config, passphrase.as_ref().map(|p| p.as_bytes()))
            .map_err(ClientError::from)?;
    if let Some(transport) = cli.transport {
        config.transport = transport;
    }
    let identity = cli
        .identity
        .as_deref()
        .map(|path| load_identity(path, passphrase.as_ref().map(|p| p.as_bytes())))
        .transpose()?;
    let opts = ConnectOptions {
        bind: cli.bind,
        identity,
    };
    // Read local inputs before connecting, so a typo costs no handshake.
    let command = cli.command;
    let input = match &command {
        Command::Sign { input, .. }
        | Command::Verify { input, .. }
        | Command::Encrypt { input, .. }
        | Command::Decrypt { input, .. } => read_input(input)?,
        Command::Cert(CertCommand::Put { file, .. }) => read_certificate(file)?,
        _ => Vec::new(),
    };

    let session = hsmgate_client::connect(&config, &opts).await?;
    let mut exit = 0;
    match command {
        Command::Ping => {
            session.ping().await?;
            println!(
                "pong from {} via {} ({})",
                session.hsm_id(),
                session.gateway_id(),
                session.peer_addr()
            );
        }
        Command::Random { n } => println!("{}", hex::encode(session.random(n).await?)),
        Command::Keygen { kind, label, id } => {
            let mut key = session.generate_key(kind, &label).await?;
            if let Some(id) = id {
                session.set_key_id(&label, &id.0).await?;
                key.id = id.0;
            }
            print_key(&key);
        }
        Command::List => {
            for key in session.list_keys().await? {
                print_key(&key);
            }
        }
        Command::Info { key } => {
            let key = session.get_key(&key).await?;
            println!("label\t{}", key.label);
            println!("type\t{}", key.kind);
            println!("id\t{}", hex_or_dash(&key.id));
            println!("public_key\t{}", hex_or_dash(&key.public_key));
        }
        Command::Delete { key } => {
            session.delete_key(&key).await?;
            println!("deleted {key}");
        }
        Command::SetId { key, id } => {
            session.set_key_id(&key, &id.0).await?;
            println!("{key}\t{}", hex_or_dash(&id.0));
        }
        Command::SignDigest {
            key,
            scheme,
            digest,
        } => println!(
            "{}",
            hex::encode(session.sign_digest(&key, scheme, &digest.0).await?)
        ),
        Command::Cert(CertCommand::Put { label, id, .. }) => {
            print_object(&session.put_object(&label, &id.0, &input).await?);
        }
        Command::Cert(CertCommand::List) => {
            for object in session.list_objects().await? {
                print_object(&object);
            }
        }
        Command::Cert(CertCommand::Get { label, out }) => {
            let (_, value) = session.get_object(&label).await?;
            match out {
                Some(path) => std::fs::write(&path, &value)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => println!("{}", hex::encode(&value)),
            }
        }
        Command::Cert(CertCommand::Delete { label }) => {
            session.delete_object(&label).await?;
            println!("deleted {label}");
        }
        Command::Sign { key, .. } => println!("{}", hex::encode(session.sign(&key, &input).await?)),
        Command::Verify { key, signature, .. } => {
            if session.verify(&key, &input, &signature.0).await? {
                println!("valid");
            } else {
                println!("invalid");
                exit = EXIT_OPERATION_FAILED;
            }
        }
        Command::Encrypt { key, aad, .. } => {
            let aad = aad.map(|a| a.0).unwrap_or_default();
            println!(
                "{}",
                hex::encode(session.encrypt(&key, &input, &aad).await?)
            );
        }
        Command::Decrypt { key, aad, .. } => {
            let aad = aad.map(|a| a.0).unwrap_or_default();
            println!(
                "{}",
                hex::encode(session.decrypt(&key, &input, &aad).await?)
            );
        }
    }
    session.close().await;
    Ok(exit)
}

/// One line per key: label, type, public key in hex (`-` for AES keys).
fn print_key(key: &KeyInfo) {
    println!(
        "{}\t{}\t{}",
        key.label,
        key.kind,
        hex_or_dash(&key.public_key)
    );
}

/// One line per certificate: label, id in hex, size in bytes.
fn print_object(object: &ObjectInfo) {
    println!(
        "{}\t{}\t{}",
        object.label,
        hex_or_dash(&object.id),
        object.size
    );
}

fn hex_or_dash(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "-".to_owned()
    } else {
        hex::encode(bytes)
    }
}

/// A certificate file: DER only (a PEM file gets a hint, not a guess).
fn read_certificate(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = read_limited(path, hsmgate_wire::ops::MAX_OBJECT as u64)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        anyhow::bail!(UsageError(format!(
            "{} is PEM; store DER: openssl x509 -in {} -outform DER -out cert.der",
            path.display(),
            path.display()
        )));
    }
    // DER of a certificate is a SEQUENCE.
    if bytes.first() != Some(&0x30) {
        anyhow::bail!(UsageError(format!(
            "{} is not a DER certificate",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The environment variable that holds the passphrase of sealed key files.
const PASSPHRASE_VAR: &str = "HSMGATE_KEY_PASSPHRASE";

fn passphrase_from_env() -> anyhow::Result<Option<zeroize::Zeroizing<String>>> {
    match std::env::var(PASSPHRASE_VAR) {
        Ok(p) => Ok(Some(zeroize::Zeroizing::new(p))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(UsageError(format!("{PASSPHRASE_VAR} is not valid UTF-8")).into())
        }
    }
}

fn load_identity(path: &Path, passphrase: Option<&[u8]>) -> anyhow::Result<StaticKeypair> {
    use hsmgate_client::KeyFile;
    let text = zeroize::Zeroizing::new(
        read_limited(path, 64 * 1024)
            .with_context(|| format!("cannot read identity file {}", path.display()))?,
    );
    let text = std::str::from_utf8(&text)
        .map_err(|_| UsageError(format!("identity file {} is not text", path.display())))?;
    let bad = |e| UsageError(format!("identity file {}: {e}", path.display()));
    match KeyFile::parse(text).map_err(bad)? {
        KeyFile::Plain(pair) => Ok(pair),
        KeyFile::Sealed(sealed) => {
            let passphrase = passphrase.ok_or_else(|| {
                UsageError(format!(
                    "identity file {} is sealed under a passphrase: set {PASSPHRASE_VAR}",
                    path.display()
                ))
            })?;
            Ok(sealed.unseal(passphrase).map_err(bad)?)
        }
    }
}

fn read_input(input: &Input) -> anyhow::Result<Vec<u8>> {
    match (&input.data, &input.file) {
        (Some(data), _) => Ok(data.0.clone()),
        (None, Some(path)) => {
            let bytes = read_limited(path, MAX_INPUT)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(bytes)
        }
        // Clap's group makes one of them required.
        (None, None) => Err(UsageError("give --data HEX or --file FILE".into()).into()),
    }
}

/// Read at most `max` bytes; a longer file is an error, not a truncation.
fn read_limited(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        anyhow::bail!(UsageError(format!("file is larger than {max} bytes")));
    }
    Ok(bytes)
}
