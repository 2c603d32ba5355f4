-- TLINK push data service: embedded SQLite schema (the same tables as schema.sql).

CREATE TABLE IF NOT EXISTS events (
  event_id TEXT NOT NULL PRIMARY KEY,
  type TEXT NOT NULL,
  device_id INTEGER NOT NULL,
  user_id INTEGER NOT NULL,
  received_at TEXT NOT NULL,
  log_day TEXT NOT NULL,
  line_no INTEGER NOT NULL,
  byte_offset INTEGER NOT NULL,
  body_hash TEXT NULL,
  line_hash TEXT NOT NULL,
  body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_events_body ON events (body_hash);

CREATE TABLE IF NOT EXISTS log_files (
  device_id INTEGER NOT NULL,
  log_day TEXT NOT NULL,
  line_count INTEGER NOT NULL,
  byte_count INTEGER NOT NULL,
  last_hash TEXT NOT NULL,
  pruned INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (device_id, log_day)
);

CREATE TABLE IF NOT EXISTS log_blocks (
  device_id INTEGER NOT NULL,
  log_day TEXT NOT NULL,
  block_no INTEGER NOT NULL,
  start_offset INTEGER NOT NULL,
  end_offset INTEGER NOT NULL,
  first_line INTEGER NOT NULL,
  min_recorded_at TEXT NULL,
  max_recorded_at TEXT NULL,
  PRIMARY KEY (device_id, log_day, block_no)
);
CREATE INDEX IF NOT EXISTS ix_log_blocks_time ON log_blocks (device_id, max_recorded_at, min_recorded_at);

CREATE TABLE IF NOT EXISTS users (
  id TEXT NOT NULL PRIMARY KEY,
  tlink_user_id INTEGER NOT NULL UNIQUE,
  parent_user_id TEXT NULL,
  parent_event_id TEXT NULL,
  updated_at TEXT NULL
);

CREATE TABLE IF NOT EXISTS devices (
  device_id INTEGER NOT NULL PRIMARY KEY,
  user_id TEXT NOT NULL,
  tlink_user_id INTEGER NOT NULL,
  owner_event_id TEXT NULL,
  parent_user_id TEXT NULL,
  device_name TEXT NULL,
  device_no TEXT NULL,
  group_id INTEGER NULL,
  lat TEXT NULL,
  lng TEXT NULL,
  is_line INTEGER NULL,
  last_flag TEXT NULL,
  last_push_time TEXT NULL,
  last_event_at TEXT NULL,
  meta_updated_at TEXT NULL
);
CREATE INDEX IF NOT EXISTS ix_devices_user ON devices (tlink_user_id, device_id);

CREATE TABLE IF NOT EXISTS sensors (
  device_id INTEGER NOT NULL,
  sensor_id INTEGER NOT NULL,
  sensor_name TEXT NULL,
  sensor_type_id INTEGER NULL,
  unit TEXT NULL,
  ordernum INTEGER NULL,
  latest_value TEXT NULL,
  latest_raw_value TEXT NULL,
  latest_recorded_at TEXT NULL,
  latest_sensor_timestamp TEXT NULL,
  is_alarm INTEGER NULL,
  is_line INTEGER NULL,
  meta_updated_at TEXT NULL,
  PRIMARY KEY (device_id, sensor_id)
);

CREATE TABLE IF NOT EXISTS sensor_readings (
  device_id INTEGER NOT NULL,
  sensor_id INTEGER NOT NULL,
  recorded_at TEXT NOT NULL,
  sensor_timestamp TEXT NULL,
  value TEXT NULL,
  raw_value TEXT NULL,
  is_alarm INTEGER NULL,
  is_line INTEGER NULL,
  event_id TEXT NOT NULL,
  PRIMARY KEY (device_id, sensor_id, recorded_at)
);

CREATE TABLE IF NOT EXISTS schema_info (
  name TEXT NOT NULL PRIMARY KEY,
  version INTEGER NOT NULL
);
