# ccci-dist image for compose.yml (beat, worker, Flower): Debian-slim Python, a non-root user
# (ccci) for the services and another (ccci-agent) for agents: the worker service runs as root
# bounded to a few capabilities and starts each agent as ccci-agent (workers/compose.toml,
# CCCI_AGENT_USER), which can read neither the worker's environment nor its secrets.
#
#   docker compose build                                  # from the package index
#   docker compose build --build-arg AGENT_CLIS="@anthropic-ai/claude-code @openai/codex"
#   docker compose build --build-arg AGENT_CLIS=./claude-code.tgz   # an npm tarball in ./agent-clis/
#
# BASE: any Debian-based image with python3 (>= 3.11) and python3-venv. The tests pass a base
# made locally from a debootstrap rootfs. WHEELS=1 installs from ./.wheels only (no index), for
# builds without a reachable package index: put ccci-dist's and its dependencies' wheels there
# (`pip wheel -w .wheels '.[all]'`).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG WHEELS=""
ENV PATH=/opt/ccci-dist/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CCCI_STATE_DIR=/var/lib/ccci-dist

# git for the loops' clones
RUN set -eu; \
    if ! command -v git >/dev/null; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --system --create-home --home-dir /var/lib/ccci-dist --shell /usr/sbin/nologin ccci; \
    useradd --system --create-home --home-dir /home/ccci-agent --shell /bin/bash ccci-agent

COPY . /src
RUN set -eu; python3 -m venv /opt/ccci-dist; \
    if [ -n "$WHEELS" ]; then \
      /opt/ccci-dist/bin/pip install --no-cache-dir --no-index --find-links /src/.wheels 'ccci-dist[all]'; \
    else \
      /opt/ccci-dist/bin/pip install --no-cache-dir '/src[all]'; \
    fi; \
    mkdir -p /app && cp -r /src/workers /src/examples /app/ && rm -rf /src; \
    install -d -o ccci -g ccci /var/lib/ccci-dist/workspaces; \
    chmod 0751 /var/lib/ccci-dist; \
    ccci-dist --version

# The agent CLIs last, in their own layers: an image with them shares every layer above with one
# without. AGENT_CLIS: npm package specs, from the registry or as tarballs put in ./agent-clis/
# (named ./FILE.tgz; the Dockerfile in the COPY only keeps it valid when that folder is absent).
ARG AGENT_CLIS=""
COPY Dockerfile agent-clis* /tmp/agent-clis/
RUN set -eu; \
    if [ -n "$AGENT_CLIS" ]; then \
      if ! command -v npm >/dev/null; then \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm \
        && rm -rf /var/lib/apt/lists/*; \
      fi; \
      cd /tmp/agent-clis && npm install -g --no-audit --no-fund $AGENT_CLIS && npm cache clean --force; \
    fi; \
    rm -rf /tmp/agent-clis

USER ccci
WORKDIR /var/lib/ccci-dist
# the beat's check; compose.yml gives each service its own (worker --ping, Flower /healthcheck)
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 CMD ["ccci-dist", "--version"]
CMD ["ccci-dist", "--help"]
