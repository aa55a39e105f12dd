"""Pipeline defaults, in one place (CLI options and the Python API read them from here)."""

#: predictor spec workers load (streamer.predictor.load_predictor); switch here to change the default
DEFAULT_PREDICTOR = "static"  # trained ensemble + conformal interval (compiled_models/static)

#: the sink's bound endpoints (loopback only; a network interface needs --curve)
DEFAULT_INGEST = "tcp://127.0.0.1:5555"  # publisher PUSH -> sink PULL: tuple packets
DEFAULT_WORK = "tcp://127.0.0.1:5556"  # worker DEALER <-> sink ROUTER: jobs and results
DEFAULT_RESULTS = "tcp://127.0.0.1:5557"  # sink PUB -> monitors' SUB: result / stats / error

WINDOW = 256  # packets received and not yet released (bounds sink memory and in-flight work)
PREFETCH = 2  # jobs a worker may hold (one computing, one queued)
HEARTBEAT_S = 0.25  # worker heartbeat period
HEARTBEAT_TIMEOUT_S = 2.0  # silence after which a worker is declared dead and its jobs re-sent
JOB_TIMEOUT_S = 30.0  # a job unanswered this long is re-sent to another worker
MAX_DELIVERIES = 3  # a packet that was dispatched this often without an answer is rejected
INGEST_HWM = 64  # packets queued in the sink's ingest socket before publishers block
PACKET_SIZE = 1000  # tuples per packet when replaying a file
CHUNK_TUPLES = 1 << 20  # tuples per persisted results chunk
STATS_INTERVAL_S = 0.5
