"""What plugs into Celery's and kombu's internals, and so must follow their versions.

    transport.py        kombu's Redis transport, guarded where a job lives only in memory
    ownership.py        which consumer holds which message; heartbeats; the restore sweep
    poison.py           unreadable messages: envelope checks and the consumer's hooks
    body_guard.py       a guard in front of Celery's task strategy: bodies it cannot unpack
    escaped_logs.py     every log record's arguments escaped
    quiet_task_logs.py  Celery's two per-task INFO lines dropped
    json_logs.py        SNACKVIDEO_LOG_FORMAT=json: one JSON object per log line
    consumer_*.lua      the ownership scripts (heartbeat, the dead, forgetting)

Package files hold no imports, so importing one module never imports its siblings.
"""
