CREATE TABLE "messages" (
  "event_id" UUID NOT NULL,
  "tenant_id" TEXT NOT NULL,
  "source" TEXT NOT NULL,
  "thread_id" TEXT NOT NULL,
  "msg_id" TEXT NOT NULL,
  "ts" TIMESTAMPTZ(6) NOT NULL,
  "author_raw" TEXT NOT NULL,
  "author_uuid" UUID NOT NULL,
  "text" TEXT,
  "media_url" TEXT,
  "media_type" TEXT,
  "attrs" JSONB,
  "pii_flags" JSONB,
  "created_at" TIMESTAMPTZ(6) NOT NULL,
  "run_id" UUID NOT NULL,
  PRIMARY KEY ("event_id"),
  CONSTRAINT "messages_run_id_fkey" FOREIGN KEY ("run_id") REFERENCES "runs" (
    "run_id"
  ) ON DELETE RESTRICT,
  CONSTRAINT "messages_media_type_one_of" CHECK ("media_type" IN ('image', 'video', 'audio'))
)
