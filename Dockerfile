# One image for the API and the workers. GPU build:
#   --build-arg GPU=1 --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG GPU=0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /srv/convnd
COPY pyproject.toml README.md ./
COPY convcore ./convcore
COPY app ./app
COPY worker ./worker
# GPU: the CUDA runtime base image carries cuBLAS, cuFFT and NVRTC, which cupy-cuda12x loads.
RUN python3 -m pip install . && if [ "$GPU" = "1" ]; then python3 -m pip install "cupy-cuda12x>=13"; fi
RUN useradd --create-home convnd
USER convnd
EXPOSE 8000
CMD ["convnd", "api", "--host", "0.0.0.0", "--port", "8000"]
