# The metering image: the worker (and later the API and projector) from one install.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY billing billing
COPY projections projections
COPY streams streams
COPY metering metering
RUN pip install --no-cache-dir . && useradd --system metering
USER metering
ENTRYPOINT ["metering"]
CMD ["worker"]
