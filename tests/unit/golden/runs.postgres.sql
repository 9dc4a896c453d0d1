CREATE TABLE "runs" (
  "run_id" UUID NOT NULL,
  "name" TEXT NOT NULL,
  "status" TEXT NOT NULL,
  "config" JSONB NOT NULL,
  "config_hash" TEXT NOT NULL,
  "parent_run_id" UUID,
  "code_version" TEXT NOT NULL,
  "host" TEXT NOT NULL,
  "pid" BIGINT NOT NULL,
  "started_at" TIMESTAMPTZ(6) NOT NULL,
  "heartbeat_at" TIMESTAMPTZ(6) NOT NULL,
  "ended_at" TIMESTAMPTZ(6),
  "error" TEXT,
  "purged_at" TIMESTAMPTZ(6),
  PRIMARY KEY ("run_id"),
  CONSTRAINT "runs_parent_run_id_fkey" FOREIGN KEY ("parent_run_id") REFERENCES "runs" (
    "run_id"
  ) ON DELETE RESTRICT,
  CONSTRAINT "runs_status_one_of" CHECK ("status" IN ('RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED', 'CRASHED', 'ROLLED_BACK')),
  CONSTRAINT "runs_status_completed_4more_66fef73d_requires" CHECK (NOT "status" IN ('COMPLETED', 'FAILED', 'CANCELLED', 'CRASHED', 'ROLLED_BACK')
  OR (
    NOT "ended_at" IS NULL
  )),
  CONSTRAINT "runs_status_running_excludes" CHECK (NOT "status" IN ('RUNNING') OR (
    "ended_at" IS NULL AND "purged_at" IS NULL
  )),
  CONSTRAINT "runs_ended_at_not_before_started_at" CHECK ("ended_at" >= "started_at"),
  CONSTRAINT "runs_heartbeat_at_not_before_started_at" CHECK ("heartbeat_at" >= "started_at")
)
