# A runnable image of the llm_assets code location (dagster code server on :4000).
#   CPU:  docker build -t llm-assets .
#   GPU:  docker build -t llm-assets:cuda --build-arg BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime \
#                      --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# The base image must provide python3.11 with venv; both stages use it so the venv paths match.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/lock.txt /tmp/lock.txt
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -r /tmp/lock.txt
COPY pyproject.toml README.md /src/
COPY llm_assets /src/llm_assets
RUN pip install --no-deps /src

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 llm && mkdir -p /app/data /app/.dagster_home && chown -R llm /app
COPY --from=build /opt/venv /opt/venv
COPY --chown=llm configs /app/configs
COPY --chown=llm workspace.yaml /app/
COPY --chown=llm configs/dagster.yaml /app/.dagster_home/dagster.yaml
ENV PATH=/opt/venv/bin:$PATH LLM_ASSETS_ROOT=/app DAGSTER_HOME=/app/.dagster_home PYTHONUNBUFFERED=1
USER llm
WORKDIR /app
EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "llm_assets.definitions"]
