-- Each bounded context's tables in a schema of its own (identity, commerce, blog, chat,
-- files, scheduler, monitoring): its records beside the events, its read models, and where
-- its readers of the log stand. A context's pool sets `search_path` to its schema, so its
-- unqualified SQL finds its own tables; the event store's tables stay in `public` for now.
--
-- A database from before this migration keeps its rows: tables move with `SET SCHEMA`
-- (indexes and sequences move with them), and each reader's checkpoint and parked events
-- move to its context.
CREATE SCHEMA IF NOT EXISTS identity;
CREATE SCHEMA IF NOT EXISTS commerce;
CREATE SCHEMA IF NOT EXISTS blog;
CREATE SCHEMA IF NOT EXISTS chat;
CREATE SCHEMA IF NOT EXISTS files;
CREATE SCHEMA IF NOT EXISTS scheduler;
CREATE SCHEMA IF NOT EXISTS monitoring;

ALTER TABLE credentials SET SCHEMA identity;
ALTER TABLE user_roles SET SCHEMA identity;
ALTER TABLE saga_order_deadlines SET SCHEMA commerce;
ALTER TABLE simulated_payments SET SCHEMA commerce;
ALTER TABLE file_bytes SET SCHEMA files;
ALTER TABLE scheduler_processes SET SCHEMA scheduler;
ALTER TABLE monitoring_series SET SCHEMA monitoring;
ALTER TABLE monitoring_samples SET SCHEMA monitoring;
ALTER TABLE monitoring_rollups SET SCHEMA monitoring;

-- Read models a projector created before (a new database has none yet: each projector
-- creates its tables in its context's schema when it starts).
ALTER TABLE IF EXISTS users SET SCHEMA identity;
ALTER TABLE IF EXISTS orders SET SCHEMA commerce;
ALTER TABLE IF EXISTS inventory_items SET SCHEMA commerce;
ALTER TABLE IF EXISTS posts SET SCHEMA blog;
ALTER TABLE IF EXISTS post_comments SET SCHEMA blog;
ALTER TABLE IF EXISTS chat_rooms SET SCHEMA chat;
ALTER TABLE IF EXISTS chat_members SET SCHEMA chat;
ALTER TABLE IF EXISTS chat_messages SET SCHEMA chat;
ALTER TABLE IF EXISTS chat_attachments SET SCHEMA chat;
ALTER TABLE IF EXISTS files SET SCHEMA files;
ALTER TABLE IF EXISTS file_blobs SET SCHEMA files;
ALTER TABLE IF EXISTS file_uploads SET SCHEMA files;
ALTER TABLE IF EXISTS file_shares SET SCHEMA files;
ALTER TABLE IF EXISTS scheduler_jobs SET SCHEMA scheduler;
ALTER TABLE IF EXISTS scheduler_runs SET SCHEMA scheduler;
ALTER TABLE IF EXISTS monitoring_rules SET SCHEMA monitoring;
ALTER TABLE IF EXISTS monitoring_alerts SET SCHEMA monitoring;
ALTER TABLE IF EXISTS business_series SET SCHEMA monitoring;

-- Where each reader of the log stands, and what it parked, in its context.
CREATE TABLE identity.projection_checkpoints (LIKE public.projection_checkpoints INCLUDING ALL);
CREATE TABLE commerce.projection_checkpoints (LIKE public.projection_checkpoints INCLUDING ALL);
CREATE TABLE blog.projection_checkpoints (LIKE public.projection_checkpoints INCLUDING ALL);
CREATE TABLE chat.projection_checkpoints (LIKE public.projection_checkpoints INCLUDING ALL);
CREATE TABLE files.projection_checkpoints (LIKE public.projection_checkpoints INCLUDING ALL);
CREATE TABLE scheduler.projection_checkpoints (LIKE public.projection_checkpoints INCLUDING ALL);
CREATE TABLE monitoring.projection_checkpoints (LIKE public.projection_checkpoints INCLUDING ALL);
CREATE TABLE identity.parked_events (LIKE public.parked_events INCLUDING ALL);
CREATE TABLE commerce.parked_events (LIKE public.parked_events INCLUDING ALL);
CREATE TABLE blog.parked_events (LIKE public.parked_events INCLUDING ALL);
CREATE TABLE chat.parked_events (LIKE public.parked_events INCLUDING ALL);
CREATE TABLE files.parked_events (LIKE public.parked_events INCLUDING ALL);
CREATE TABLE scheduler.parked_events (LIKE public.parked_events INCLUDING ALL);
CREATE TABLE monitoring.parked_events (LIKE public.parked_events INCLUDING ALL);

INSERT INTO identity.projection_checkpoints
    SELECT * FROM public.projection_checkpoints WHERE name IN ('users');
INSERT INTO commerce.projection_checkpoints
    SELECT * FROM public.projection_checkpoints WHERE name IN ('inventory', 'orders', 'saga-orders');
INSERT INTO blog.projection_checkpoints
    SELECT * FROM public.projection_checkpoints WHERE name IN ('posts');
INSERT INTO chat.projection_checkpoints
    SELECT * FROM public.projection_checkpoints WHERE name IN ('chat_history');
INSERT INTO files.projection_checkpoints
    SELECT * FROM public.projection_checkpoints WHERE name IN ('file_metadata');
INSERT INTO scheduler.projection_checkpoints
    SELECT * FROM public.projection_checkpoints WHERE name IN ('jobs');
INSERT INTO monitoring.projection_checkpoints
    SELECT * FROM public.projection_checkpoints
    WHERE name IN ('alerts', 'business_metrics', 'alert-notifier');
INSERT INTO identity.parked_events
    SELECT * FROM public.parked_events WHERE subscriber IN ('users');
INSERT INTO commerce.parked_events
    SELECT * FROM public.parked_events WHERE subscriber IN ('inventory', 'orders', 'saga-orders');
INSERT INTO blog.parked_events
    SELECT * FROM public.parked_events WHERE subscriber IN ('posts');
INSERT INTO chat.parked_events
    SELECT * FROM public.parked_events WHERE subscriber IN ('chat_history');
INSERT INTO files.parked_events
    SELECT * FROM public.parked_events WHERE subscriber IN ('file_metadata');
INSERT INTO scheduler.parked_events
    SELECT * FROM public.parked_events WHERE subscriber IN ('jobs');
INSERT INTO monitoring.parked_events
    SELECT * FROM public.parked_events
    WHERE subscriber IN ('alerts', 'business_metrics', 'alert-notifier');
DELETE FROM public.projection_checkpoints
    WHERE name IN ('users', 'inventory', 'orders', 'saga-orders', 'posts', 'chat_history',
                   'file_metadata', 'jobs', 'alerts', 'business_metrics', 'alert-notifier');
DELETE FROM public.parked_events
    WHERE subscriber IN ('users', 'inventory', 'orders', 'saga-orders', 'posts',
                         'chat_history', 'file_metadata', 'jobs', 'alerts',
                         'business_metrics', 'alert-notifier');
