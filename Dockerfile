# The hpsearch image: workers, create-study and the dashboard (see docker-compose.yml).
# torch comes from PyPI with its CUDA libraries; the host needs the NVIDIA container toolkit.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: code changes do not reinstall torch.
COPY pyproject.toml README.md ./
RUN python -c "import subprocess, sys, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', *deps])"

COPY hpsearch ./hpsearch
COPY studies ./studies
COPY worker.py ./
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 hpsearch \
    && mkdir -p /var/lib/hpsearch \
    && chown hpsearch:hpsearch /var/lib/hpsearch

USER hpsearch
# The worker turns SIGTERM into "hand the trial back and exit".
STOPSIGNAL SIGTERM
CMD ["hpsearch", "--help"]
