# syntax=docker/dockerfile:1.7
# GPU training image: pretrain and sft (torchrun + DeepSpeed ZeRO, LoRA, 8/4-bit bases), eval and generate on GPUs.
# Build from the repository root: `make images` (docker build -f images/train.Dockerfile .).
# Versions: the CUDA base by exact tag, torch by exact version from the CUDA wheel index, everything else by
# images/constraints.txt (the versions CI tests with). No credentials: S3 keys come from a Secret at run time.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# flash-attention (Ampere and newer, sm80+): training's attn_implementation auto picks it where it imports, and
# packed SFT runs its varlen kernel. FLASH_ATTN=0 for older GPUs or a faster build: training then uses sdpa.
ARG FLASH_ATTN=1
ARG VERSION=dev

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    ZHLLAMA_JOBS_DIR=/app/jobs

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev git ninja-build \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /app
COPY images/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md /app/
COPY pkg /app/pkg
RUN pip install -c /tmp/constraints.txt "/app[eval]" deepspeed bitsandbytes \
    && if [ "${FLASH_ATTN}" = "1" ]; then \
         MAX_JOBS=8 pip install -c /tmp/constraints.txt --no-build-isolation flash-attn; \
       fi
COPY jobs /app/jobs

RUN useradd --uid 1000 --user-group --create-home --home-dir /home/zhllama zhllama
USER 1000:1000

LABEL org.opencontainers.image.title="zhllama-train" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/zhllama/zhllama"

# The chart runs `torchrun ... /app/jobs/<stage>.py --spec /etc/zhllama/spec.json`; by hand, the CLI.
ENTRYPOINT ["python", "-m", "zhllama.cli.main"]
CMD ["--help"]
