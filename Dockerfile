# leadflow engine image: the same code as the embedded default, configured by environment.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY consumers ./consumers
COPY projections ./projections
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["leadflow"]
CMD ["--help"]
