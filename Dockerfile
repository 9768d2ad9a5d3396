# omnitrigger: `docker build -t omnitrigger .`; the entry point is the CLI (`run`, `replay`, `record`, `publish`).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY omnitrigger omnitrigger
COPY flows flows
COPY operators operators
COPY state state
COPY schemas schemas
RUN pip install --no-cache-dir . && useradd --create-home omnitrigger && mkdir -p /var/lib/omnitrigger \
    && chown omnitrigger /var/lib/omnitrigger
COPY deploy/stores.csv /etc/omnitrigger/stores.csv
USER omnitrigger
EXPOSE 9464
ENTRYPOINT ["omnitrigger"]
CMD ["--help"]
