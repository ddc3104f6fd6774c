# tokenyard: one stateless proxy replica. Build: docker build -t tokenyard .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY config ./config
RUN pip install --no-cache-dir ".[otel]" && useradd --system --uid 10001 tokenyard
USER tokenyard
EXPOSE 8080
# The config comes from a mounted file (TOKENYARD_CONFIG) and its secrets from the environment.
ENTRYPOINT ["tokenyard"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health/ready')"
