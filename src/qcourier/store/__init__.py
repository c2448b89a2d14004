"""A study shared by a team on S3-compatible object storage (IBM Cloud Object Storage, or any
S3 server): what each machine wrote, published as immutable, create-only objects."""
