# The crmsync image: the CLI, the Faust workers (streams/), the adapters and the API emulators.
# docker-compose.yml builds it as crmsync:<project version> and runs every crmsync service from it.
FROM python:3.11.17-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A Java 17 runtime for embedded mode only: pydbzengine runs the Debezium embedded engine inside the
# Python process (JPype), which needs a JVM. Distributed mode captures with Kafka Connect instead,
# but one image serves both. The package is left unpinned on purpose: Debian drops superseded
# versions from its archive, and bookworm's security updates are what we want. The slim image has
# no /usr/share/man, where the JRE's postinst registers man pages with update-alternatives.
# JAVA_HOME gets an architecture-independent path.
RUN set -eux; \
    mkdir -p /usr/share/man/man1; \
    apt-get update; \
    apt-get install -y --no-install-recommends openjdk-17-jre-headless; \
    rm -rf /var/lib/apt/lists/*; \
    ln -s "/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)" /usr/lib/jvm/java-17; \
    /usr/lib/jvm/java-17/bin/java -version
ENV JAVA_HOME=/usr/lib/jvm/java-17

RUN groupadd --system --gid 10001 crmsync \
    && useradd --system --uid 10001 --gid crmsync --create-home --shell /usr/sbin/nologin crmsync

WORKDIR /app
COPY pyproject.toml README.md ./
COPY crmsync/ crmsync/
COPY streams/ streams/
COPY adapters/ adapters/
COPY canonical_db/ canonical_db/
COPY emulators/ emulators/
COPY connect/ connect/
COPY config/ config/
COPY schemas/ schemas/

# The code stays root-owned; the service user may only create files in /app (e.g. a worker's data
# directory) and in the state directory.
RUN set -eux; \
    pip install .; \
    rm -rf build ./*.egg-info; \
    install -d -o crmsync -g crmsync /app/.crmsync; \
    chown crmsync:crmsync /app

# After a (non-editable) install the package lives in site-packages, so the defaults derived from
# the source tree would point there: aim the file settings at the copies in /app.
ENV CRMSYNC_STATE_DIR=/app/.crmsync \
    CRMSYNC_OWNERSHIP_FILE=/app/config/ownership.toml \
    CRMSYNC_MAPPING_FILE=/app/config/mapping.toml \
    CRMSYNC_CONNECTOR_FILE=/app/connect/crmsync-postgres.json

USER crmsync
CMD ["crmsync", "--help"]
