CREATE TABLE "documents" (
  "id" UUID USING COMPRESSION uncompressed NOT NULL,
  "doc_type" TEXT NOT NULL,
  "content" TEXT NOT NULL,
  "created_at" TIMESTAMPTZ NOT NULL,
  "source_checksum" TEXT,
  "title" TEXT,
  "slug" TEXT,
  "date" DATE,
  "summary" TEXT,
  "authors" JSON,
  "tags" JSON,
  "status" TEXT,
  "subject_uuid" UUID,
  "alias" TEXT,
  "avatar_url" TEXT,
  "interests" JSON,
  "filename" TEXT,
  "mime_type" TEXT,
  "media_type" TEXT,
  "phash" TEXT,
  "window_start" TIMESTAMPTZ,
  "window_end" TIMESTAMPTZ,
  "extensions" JSON,
  "run_id" UUID USING COMPRESSION uncompressed NOT NULL,
  PRIMARY KEY ("id"),
  CONSTRAINT "documents_run_id_fkey" FOREIGN KEY ("run_id") REFERENCES "runs" (
    "run_id"
  ),
  CONSTRAINT "documents_doc_type_one_of" CHECK ("doc_type" IN ('post', 'profile', 'journal', 'media', 'enrichment', 'announcement')),
  CONSTRAINT "documents_status_one_of" CHECK ("status" IN ('draft', 'published', 'archived')),
  CONSTRAINT "documents_media_type_one_of" CHECK ("media_type" IN ('image', 'video', 'audio')),
  CONSTRAINT "documents_doc_type_post_requires" CHECK (NOT "doc_type" IN ('post')
  OR (
    NOT "title" IS NULL AND NOT "slug" IS NULL AND NOT "status" IS NULL
  )),
  CONSTRAINT "documents_doc_type_profile_requires" CHECK (NOT "doc_type" IN ('profile')
  OR (
    NOT "title" IS NULL AND NOT "subject_uuid" IS NULL
  )),
  CONSTRAINT "documents_doc_type_journal_requires" CHECK (NOT "doc_type" IN ('journal')
  OR (
    NOT "title" IS NULL AND NOT "window_start" IS NULL AND NOT "window_end" IS NULL
  )),
  CONSTRAINT "documents_doc_type_media_requires" CHECK (NOT "doc_type" IN ('media') OR (
    NOT "filename" IS NULL
  )),
  CONSTRAINT "documents_window_end_not_before_window_start" CHECK ("window_end" >= "window_start")
)
