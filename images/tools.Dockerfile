# syntax=docker/dockerfile:1.7
# CPU tools image: tokenizer, merge, quantize (GGUF) and CPU eval; `ctl` itself for in-cluster automation.
# Build from the repository root: `make images` (docker build -f images/tools.Dockerfile .).
# Versions: the Python base by exact tag, torch (CPU build) by exact version, everything else by
# images/constraints.txt. No credentials: S3 keys come from a Secret at run time.
FROM python:3.11.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG VERSION=dev

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    ZHLLAMA_JOBS_DIR=/app/jobs

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /app
COPY images/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md /app/
COPY pkg /app/pkg
RUN pip install -c /tmp/constraints.txt "/app[eval]"
COPY jobs /app/jobs

RUN useradd --uid 1000 --user-group --create-home --home-dir /home/zhllama zhllama
USER 1000:1000

LABEL org.opencontainers.image.title="zhllama-tools" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/zhllama/zhllama"

# The chart runs `python /app/jobs/<stage>.py --spec /etc/zhllama/spec.json`; by hand, the CLI.
ENTRYPOINT ["python", "-m", "zhllama.cli.main"]
CMD ["--help"]
