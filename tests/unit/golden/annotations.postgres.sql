CREATE TABLE "annotations" (
  "id" UUID NOT NULL,
  "document_id" UUID NOT NULL,
  "content" TEXT NOT NULL,
  "created_at" TIMESTAMPTZ(6) NOT NULL,
  "source_checksum" TEXT,
  "author_id" TEXT,
  "run_id" UUID NOT NULL,
  PRIMARY KEY ("id"),
  CONSTRAINT "annotations_document_id_fkey" FOREIGN KEY ("document_id") REFERENCES "documents" (
    "id"
  ) ON DELETE RESTRICT,
  CONSTRAINT "annotations_run_id_fkey" FOREIGN KEY ("run_id") REFERENCES "runs" (
    "run_id"
  ) ON DELETE RESTRICT
)
