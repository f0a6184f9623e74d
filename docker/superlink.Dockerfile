# SuperLink with fedsim installed: the ServerApp (strategy + central evaluation) runs here.
# Built from Flower's official image of the pinned flwr version.
ARG FLWR_VERSION=1.42.0
FROM flwr/superlink:${FLWR_VERSION}
USER root
WORKDIR /opt/fedsim
COPY pyproject.toml README.md ./
COPY fedsim ./fedsim
COPY strategies ./strategies
COPY topologies ./topologies
COPY scenarios ./scenarios
# CPU-only torch (the default PyPI wheel on x86-64 bundles CUDA and is several GB).
RUN python -m pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu . \
    && chown -R app:app /opt/fedsim
USER app
WORKDIR /app
ENTRYPOINT ["flower-superlink"]
