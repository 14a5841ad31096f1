# The metering image: worker and read model (projector + API) from one install.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY runtime runtime
COPY schemas schemas
COPY billing billing
COPY projections projections
COPY observability observability
COPY readmodel readmodel
COPY streams streams
COPY notify notify
COPY api api
COPY web web
COPY server server
COPY metering metering
RUN pip install --no-cache-dir --require-hashes -r requirements.lock \
    && pip install --no-cache-dir --no-deps --no-build-isolation . && useradd --system metering && mkdir /data && chown metering /data
USER metering
ENTRYPOINT ["metering"]
CMD ["worker"]
