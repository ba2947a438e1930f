//! The server's settings: one struct that is both the `earshot serve` flags and what the running
//! server reads. Every limit the seed document asks for lives here with its default.
//!
//! Parsing only; this module must not open sockets or files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::Args;

/// `earshot serve` settings. Each flag can also be set by an `EARSHOT_*` environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on. Use 0.0.0.0:8767 to accept other machines (put TLS in front).
    #[arg(long, env = "EARSHOT_LISTEN", default_value = "127.0.0.1:8767")]
    pub listen: SocketAddr,

    /// Whisper model: a name (tiny.en, base, small-q5_1, …) fetched into --models-dir, or a path.
    /// The default model when --models is `all`; ignored when --models lists models.
    #[arg(long, env = "EARSHOT_MODEL", default_value = crate::models::DEFAULT_MODEL)]
    pub model: String,

    /// Models requests may choose by name (comma-separated; the first is the default, loaded
    /// at start and always resident; the others are loaded on first use), or `all`: --model
    /// plus every ggml model found in --models-dir. Empty = --model alone.
    #[arg(
        long,
        env = "EARSHOT_MODELS",
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    pub models: Vec<String>,

    /// A model other than the default that no request has used for this long is unloaded
    /// (it is loaded again on its next use).
    #[arg(long, env = "EARSHOT_MODEL_IDLE_UNLOAD", default_value = "10m", value_parser = positive_duration)]
    pub model_idle_unload: Duration,

    /// Memory all loaded models may take, counted as their file sizes (e.g. 1GiB). A request for
    /// a model that does not fit unloads idle models, least recently used first; when the models
    /// in use leave no room it is answered `busy`. Unset = the sum of the served models' sizes.
    #[arg(long, env = "EARSHOT_MODEL_MEMORY")]
    pub model_memory: Option<ByteSize>,

    /// Script for Mandarin output when a request does not name one (`language` `zh-Hans` or
    /// `zh-Hant` does): simplified, traditional, or keep (as Whisper wrote it, scripts mixed).
    #[arg(
        long,
        env = "EARSHOT_ZH_SCRIPT",
        value_enum,
        default_value = "simplified"
    )]
    pub zh_script: crate::domain::ZhScript,

    /// Where model files are kept and fetched to.
    #[arg(long, env = "EARSHOT_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,

    /// Whisper worker threads, each with its own decoder state (memory grows with each).
    #[arg(long, env = "EARSHOT_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// CPU threads each worker uses inside whisper.cpp. A live stream moves to one thread while
    /// other work holds the cores (whisper.cpp's threads spin), and back once they are free.
    #[arg(long, env = "EARSHOT_THREADS", default_value_t = default_threads())]
    pub threads: usize,

    /// Beam search width for files, uploads and HTTP requests; 1 decodes greedily (faster, a
    /// little less accurate). The default is whisper-cli's. Live streams (WebSocket, Realtime,
    /// Wyoming) always decode greedily, to keep up with speech.
    #[arg(long, env = "EARSHOT_BEAM_SIZE", default_value_t = crate::inference::engine::DEFAULT_BEAM_SIZE, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub beam_size: u32,

    /// Share of the Whisper workers' time live streams may fill together (0.75: three quarters
    /// of each worker), measured from their recent hypotheses; a new live stream beyond it is
    /// answered `busy` instead of slowing every stream down.
    #[arg(long, env = "EARSHOT_LIVE_CAPACITY", default_value_t = 0.75)]
    pub live_capacity: f64,

    /// Jobs that may wait for a worker before new ones are answered `busy`.
    #[arg(long, env = "EARSHOT_QUEUE", default_value_t = 16)]
    pub queue: usize,

    /// Upload state, received bytes and results (survives restarts).
    #[arg(long, env = "EARSHOT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Uploads receiving data at once (the seed's upload semaphore).
    #[arg(long, env = "EARSHOT_MAX_UPLOADS", default_value_t = 5)]
    pub max_uploads: usize,

    /// Upload slots one client (its API key, or its address without keys) may hold at once,
    /// so one client cannot take them all; 0 = no per-client limit.
    #[arg(long, env = "EARSHOT_MAX_UPLOADS_PER_CLIENT", default_value_t = 3)]
    pub max_uploads_per_client: usize,

    /// An upload that receives nothing for this long gives its slot back (it can resume
    /// later, taking a free slot again), so idle uploads cannot hold slots others need.
    #[arg(long, env = "EARSHOT_UPLOAD_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub upload_idle_timeout: Duration,

    /// How long a live stream whose connection dropped without `stream_end` waits, with its
    /// audio and state kept, for its client to continue it (`stream_start` with its `task_id`
    /// and `resume: true`); after that it is finished as interrupted. 0 = no resume.
    #[arg(long, env = "EARSHOT_STREAM_RESUME_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub stream_resume_grace: Duration,

    /// Interrupted live streams one client (its API key, or its address without keys) may
    /// have waiting for a resume at once; past that a dropped stream is finished at once.
    /// All clients together may have at most `--max-connections` waiting.
    #[arg(
        long,
        env = "EARSHOT_MAX_DETACHED_STREAMS_PER_CLIENT",
        default_value_t = 4
    )]
    pub max_detached_streams_per_client: usize,

    /// Files transcribed at once (the seed's processing semaphore); more wait their turn.
    #[arg(long, env = "EARSHOT_MAX_PROCESSING", default_value_t = 3)]
    pub max_processing: usize,

    /// Open WebSocket connections at once; more are refused with `busy`.
    #[arg(long, env = "EARSHOT_MAX_CONNECTIONS", default_value_t = 2048)]
    pub max_connections: usize,

    /// Accepted connections still waiting for a complete request head (new ones, and idle
    /// keep-alive ones between requests; not WebSockets, not requests in progress). At the cap
    /// the oldest is closed to make room, so a flood of silent sockets cannot lock out a
    /// health check.
    #[arg(long, env = "EARSHOT_MAX_PENDING_CONNECTIONS", default_value_t = 256, value_parser = at_least_one)]
    pub max_pending_connections: usize,

    /// Time a connection has to send a whole request head (also between keep-alive requests);
    /// then it is closed. Counts from the first byte it may send, so dripping bytes buys nothing.
    #[arg(long, env = "EARSHOT_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_timeout: Duration,

    /// Time from a WebSocket upgrade request's head to a finished upgrade (the socket handed
    /// to a session, or a refused one closed).
    #[arg(long, env = "EARSHOT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub handshake_timeout: Duration,

    /// Largest file one upload may announce.
    #[arg(long, env = "EARSHOT_MAX_FILE_BYTES", default_value = "4GiB")]
    pub max_file_bytes: ByteSize,

    /// Disk space all unfinished uploads together may claim.
    #[arg(long, env = "EARSHOT_DISK_QUOTA_BYTES", default_value = "20GiB")]
    pub disk_quota_bytes: ByteSize,

    /// Disk space the unfinished uploads of one client (key or address) may claim.
    #[arg(long, env = "EARSHOT_DISK_QUOTA_PER_CLIENT", default_value = "10GiB")]
    pub disk_quota_per_client: ByteSize,

    /// How long an unfinished upload that receives nothing keeps its whole declared size
    /// reserved; after that it reserves only the bytes it holds until it resumes.
    #[arg(long, env = "EARSHOT_RESERVATION_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub reservation_ttl: Duration,

    /// Largest WebSocket message; bigger ones close the connection with 1009 (seed: 10 MB).
    #[arg(long, env = "EARSHOT_MAX_MESSAGE_BYTES", default_value = "10MiB")]
    pub max_message_bytes: ByteSize,

    /// How often the server pings an idle client (seed: 60 s).
    #[arg(long, env = "EARSHOT_PING_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Silence from a client after which its connection is closed (seed: 120 s).
    #[arg(long, env = "EARSHOT_PING_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub ping_timeout: Duration,

    /// How long an idle upload and a finished task's result are kept.
    #[arg(long, env = "EARSHOT_SESSION_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,

    /// How long shutdown waits for running transcriptions before it stops them.
    #[arg(long, env = "EARSHOT_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// An API key clients must send as `Authorization: Bearer KEY` (repeat for several; env:
    /// comma-separated). Without any key the server is open to whoever can reach it.
    #[arg(
        long = "api-key",
        env = "EARSHOT_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Web origins allowed to open WebSocket connections from a browser (comma-separated, e.g.
    /// https://app.example.com); checked when an upgrade carries an Origin header. Empty = any.
    #[arg(long, env = "EARSHOT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Connections and requests one client address may have open at once (0 = no per-client
    /// limit). Behind a reverse proxy every client shares the proxy's address.
    #[arg(long, env = "EARSHOT_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Requests (HTTP calls and WebSocket upgrades) one client address may make per minute,
    /// with bursts up to the same number (0 = no rate limit).
    #[arg(long, env = "EARSHOT_RATE_LIMIT_PER_MINUTE", default_value_t = 0)]
    pub rate_limit_per_minute: u32,

    /// Also speak the Wyoming protocol (Home Assistant's voice pipeline) on this TCP address,
    /// e.g. 0.0.0.0:10300. Off when unset.
    #[arg(long, env = "EARSHOT_WYOMING", value_name = "ADDR")]
    pub wyoming: Option<SocketAddr>,

    /// A Wyoming client that sends nothing for this long while the server waits for it (or
    /// does not read what the server sends) is closed.
    #[arg(long, env = "EARSHOT_WYOMING_IDLE_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub wyoming_idle_timeout: Duration,

    /// Open Wyoming connections at once; one more is answered `busy` and closed.
    #[arg(long, env = "EARSHOT_WYOMING_MAX_CONNECTIONS", default_value_t = 32, value_parser = at_least_one)]
    pub wyoming_max_connections: usize,

    /// Longest audio one Wyoming transcription may send; longer is refused (`audio-too-long`).
    #[arg(long, env = "EARSHOT_WYOMING_MAX_AUDIO", default_value = "5m", value_parser = positive_duration)]
    pub wyoming_max_audio: Duration,

    /// Free disk space in the data directory below which /readyz reports not ready, and which
    /// uploads may not eat into: one that would is refused with `quota_exceeded` (HTTP 507).
    #[arg(long, env = "EARSHOT_MIN_FREE_DISK", default_value = "1GiB")]
    pub min_free_disk: ByteSize,

    /// Join a cluster: NATS server URLs (`nats://host:4222`, comma-separated) whose JetStream
    /// holds the tasks, results and batch jobs every node shares (docs/CLUSTER.md). Empty =
    /// one node on its own data directory.
    #[arg(
        long,
        env = "EARSHOT_CLUSTER",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub cluster: Vec<String>,

    /// In a cluster: how long a job may go without word from the node running it before
    /// another node takes it over (a running node reports three times per period). It belongs
    /// to the cluster's job queue, which the first node to start creates: give every node the
    /// same value (a node whose value differs warns and keeps to the queue's).
    #[arg(long, env = "EARSHOT_CLUSTER_ACK_WAIT", default_value = "30s", value_parser = positive_duration)]
    pub cluster_ack_wait: Duration,

    /// In a cluster: copies NATS keeps of every stream and bucket (tasks, events, jobs, audio,
    /// uploads). 1 for a single NATS server; 3 for a three-node NATS cluster, so losing one
    /// NATS machine loses nothing acknowledged.
    #[arg(long, env = "EARSHOT_CLUSTER_REPLICAS", default_value = "1", value_parser = at_least_one)]
    pub cluster_replicas: usize,

    /// In a cluster: how long a node keeps the right to write an upload after its last
    /// stored chunk; past it another node may take the upload over (`upload_resume` on another
    /// node takes it at once, so this only bounds how long a vanished node blocks one).
    #[arg(long, env = "EARSHOT_CLUSTER_LEASE", default_value = "10s", value_parser = positive_duration)]
    pub cluster_lease: Duration,

    /// In a cluster: keep upload bytes in shared storage instead of NATS — `file:///DIR`, a
    /// directory every node mounts (NFS or the like; each chunk is fsynced before it is
    /// acknowledged). NATS keeps the upload records, leases and jobs either way. Unset = the
    /// bytes go through NATS JetStream (docs/CLUSTER.md).
    #[arg(long, env = "EARSHOT_CLUSTER_UPLOAD_STORE", value_name = "URL", value_parser = upload_store)]
    pub cluster_upload_store: Option<String>,
}

/// A `--cluster-upload-store` URL this build can open, checked before anything starts.
fn upload_store(raw: &str) -> Result<String, String> {
    crate::cluster::chunk_store::store_dir(raw)
        .map(|_| raw.to_string())
        .map_err(|e| e.to_string())
}

/// A count that must not be zero (a cap of zero would refuse everything).
fn at_least_one(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration that must not be zero (a zero deadline would close every connection at once).
fn positive_duration(raw: &str) -> Result<Duration, String> {
    match humantime::parse_duration(raw) {
        Ok(d) if d.is_zero() => Err("must be longer than 0s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// All cores but none beyond four: whisper.cpp gains little past that on small models.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
}

impl ServerConfig {
    /// The model to load at start, the default: the first of --models, else --model.
    pub fn default_model(&self) -> &str {
        match self.models.first() {
            Some(first) if !self.serves_all() => first,
            _ => &self.model,
        }
    }

    /// Whether --models is `all` (every model in --models-dir).
    pub fn serves_all(&self) -> bool {
        matches!(self.models.as_slice(), [all] if all == "all")
    }

    /// Settings for tests and embedding: defaults, an ephemeral port, and the given data dir.
    pub fn for_tests(model: impl Into<String>, data_dir: PathBuf) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: ServerConfig,
        }
        let mut config = Wrapper::parse_from(["earshot"]).config;
        config.listen = "127.0.0.1:0".parse().expect("a valid address");
        config.model = model.into();
        config.data_dir = data_dir;
        config
    }
}
