FROM python:3.11-slim

# APP_HOST=0.0.0.0 serves the container's port directly; docker-compose.yml sets 127.0.0.1 and puts
# nginx (deploy/nginx.conf) in front, the production set-up (README, "Production").
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DATA_DIR=/data BACKUP_DIR=/backups APP_HOST=0.0.0.0 APP_PORT=5000

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .

RUN useradd --create-home --uid 10001 studio \
    && mkdir -p /data /backups && chown studio:studio /data /backups
USER studio
VOLUME ["/data", "/backups"]
EXPOSE 5000

# Several workers share /data; a file lock makes exactly one of them run the task pipeline
# (gunicorn.conf.py: WEB_WORKERS, WEB_THREADS).
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
