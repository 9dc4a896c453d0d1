CREATE TABLE "annotations" (
  "id" UUID USING COMPRESSION uncompressed NOT NULL,
  "document_id" UUID USING COMPRESSION uncompressed NOT NULL,
  "content" TEXT NOT NULL,
  "created_at" TIMESTAMPTZ NOT NULL,
  "source_checksum" TEXT,
  "author_id" TEXT,
  "run_id" UUID USING COMPRESSION uncompressed NOT NULL,
  PRIMARY KEY ("id"),
  CONSTRAINT "annotations_document_id_fkey" FOREIGN KEY ("document_id") REFERENCES "documents" (
    "id"
  ),
  CONSTRAINT "annotations_run_id_fkey" FOREIGN KEY ("run_id") REFERENCES "runs" (
    "run_id"
  )
)
