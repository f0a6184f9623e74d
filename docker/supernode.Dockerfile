# SuperNode with fedsim installed: one device; the ClientApp trains on its partition.
# On a Raspberry Pi-class device (arm64) PyPI's torch wheel is already CPU-only.
ARG FLWR_VERSION=1.42.0
FROM flwr/supernode:${FLWR_VERSION}
USER root
WORKDIR /opt/fedsim
COPY pyproject.toml README.md ./
COPY fedsim ./fedsim
COPY strategies ./strategies
COPY topologies ./topologies
COPY scenarios ./scenarios
RUN python -m pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu . \
    && chown -R app:app /opt/fedsim
USER app
WORKDIR /app
ENTRYPOINT ["flower-supernode"]
