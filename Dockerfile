# One image for the API and the workers.
#   CPU (default):  docker build -t convnd .
#   GPU:            docker build -t convnd-gpu --build-arg GPU=1 --build-arg BASE=nvidia/cuda:12.9.1-base-ubuntu24.04 .
# The GPU build installs the `gpu` extra: CuPy with the CUDA 12 libraries (cuFFT, cuBLAS, NVRTC) AND the
# CUDA runtime headers that NVRTC needs for every kernel CuPy compiles, all as wheels, so any base works;
# the nvidia/cuda base adds the container toolkit's settings. The host needs only the NVIDIA driver
# (>= 525 for CUDA 12) and the NVIDIA container toolkit. At start-up each GPU worker self-tests its GPU
# (CONVND_DEVICE=gpu: it exits with the reason if that fails; see README, "GPU workers").
ARG BASE=python:3.12-slim
FROM ${BASE}
ARG GPU=0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PATH=/opt/convnd/bin:$PATH
# Non-Python bases (nvidia/cuda): Python from the distribution, in a venv (Ubuntu 24.04's pip refuses
# to install into the system Python).
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi && python3 -m venv /opt/convnd
WORKDIR /srv/convnd
COPY pyproject.toml README.md ./
COPY convcore ./convcore
COPY app ./app
COPY worker ./worker
RUN if [ "$GPU" = "1" ]; then pip install ".[gpu]"; else pip install .; fi
# Not root: a root Celery worker is what Celery warns about (README, "Run it as a normal user").
RUN useradd --create-home --uid 10001 convnd
USER convnd
EXPOSE 8000
CMD ["convnd", "api", "--host", "0.0.0.0", "--port", "8000"]
