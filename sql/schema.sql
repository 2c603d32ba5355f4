-- TLINK push data service: MySQL 8 / MariaDB 10.11 schema.
-- Applied at start-up when AUTO_APPLY_SCHEMA=true (every statement is idempotent),
-- and by the MySQL container on first boot.
-- The log files are the source of truth: every table below can be rebuilt from them
-- (`tlink-push replay`; `tlink-push rebuild` for the read models while serving).

-- One row per log line, in the same transaction as the read models it feeds. The ids
-- are UUIDv7, so the primary key grows in time order. Auditors read a device's events
-- from its log files (or GET /api/users/<u>/devices/<d>/events), not from here.
CREATE TABLE IF NOT EXISTS events (
  event_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
  type VARCHAR(32) NOT NULL,
  device_id BIGINT NOT NULL,
  user_id BIGINT NOT NULL,
  received_at DATETIME(3) NOT NULL,
  log_day CHAR(10) NOT NULL,
  line_no INT NOT NULL,
  byte_offset BIGINT NOT NULL,
  body_hash CHAR(64) NULL,
  line_hash CHAR(64) NOT NULL,
  body LONGTEXT NOT NULL,
  KEY ix_events_body (body_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Per device and daily file: how far the projection has applied it, and the hash of
-- its last applied line (so cutting lines off the end of a file is detectable).
CREATE TABLE IF NOT EXISTS log_files (
  device_id BIGINT NOT NULL,
  log_day CHAR(10) NOT NULL,
  line_count INT NOT NULL,
  byte_count BIGINT NOT NULL,
  last_hash CHAR(64) NOT NULL,
  pruned TINYINT NOT NULL DEFAULT 0,
  PRIMARY KEY (device_id, log_day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Side index for history: per block of 64 lines, where it lies and which reading
-- times it holds, so a history request reads only the blocks that can matter.
CREATE TABLE IF NOT EXISTS log_blocks (
  device_id BIGINT NOT NULL,
  log_day CHAR(10) NOT NULL,
  block_no INT NOT NULL,
  start_offset BIGINT NOT NULL,
  end_offset BIGINT NOT NULL,
  first_line INT NOT NULL,
  min_recorded_at DATETIME NULL,
  max_recorded_at DATETIME NULL,
  PRIMARY KEY (device_id, log_day, block_no),
  KEY ix_log_blocks_time (device_id, max_recorded_at, min_recorded_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Read models.
-- Facts that several devices' logs can touch (a user's parentUserId, a device's owner)
-- are decided by the greatest (time-ordered) event id, never by processing order.
CREATE TABLE IF NOT EXISTS users (
  id CHAR(36) NOT NULL PRIMARY KEY,
  tlink_user_id BIGINT NOT NULL,
  parent_user_id VARCHAR(64) NULL,
  parent_event_id CHAR(36) CHARACTER SET ascii NULL,
  updated_at DATETIME(3) NULL,
  UNIQUE KEY uq_users_tlink (tlink_user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS devices (
  device_id BIGINT NOT NULL PRIMARY KEY,
  user_id CHAR(36) NOT NULL,
  tlink_user_id BIGINT NOT NULL,
  owner_event_id CHAR(36) CHARACTER SET ascii NULL,
  parent_user_id VARCHAR(64) NULL,
  device_name VARCHAR(255) NULL,
  device_no VARCHAR(128) NULL,
  group_id BIGINT NULL,
  lat VARCHAR(32) NULL,
  lng VARCHAR(32) NULL,
  is_line TINYINT NULL,
  last_flag VARCHAR(16) NULL,
  last_push_time DATETIME NULL,
  last_event_at DATETIME(3) NULL,
  meta_updated_at DATETIME(3) NULL,
  KEY ix_devices_user (tlink_user_id, device_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- A sensor is (device_id, sensor_id) and a reading (device_id, sensor_id, recorded_at):
-- two devices may report the same sensor id.
CREATE TABLE IF NOT EXISTS sensors (
  device_id BIGINT NOT NULL,
  sensor_id BIGINT NOT NULL,
  sensor_name VARCHAR(255) NULL,
  sensor_type_id BIGINT NULL,
  unit VARCHAR(64) NULL,
  ordernum BIGINT NULL,
  latest_value TEXT NULL,
  latest_raw_value TEXT NULL,
  latest_recorded_at DATETIME NULL,
  latest_sensor_timestamp VARCHAR(32) NULL,
  is_alarm TINYINT NULL,
  is_line TINYINT NULL,
  meta_updated_at DATETIME(3) NULL,
  PRIMARY KEY (device_id, sensor_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS sensor_readings (
  device_id BIGINT NOT NULL,
  sensor_id BIGINT NOT NULL,
  recorded_at DATETIME NOT NULL,
  sensor_timestamp VARCHAR(32) NULL,
  value TEXT NULL,
  raw_value TEXT NULL,
  is_alarm TINYINT NULL,
  is_line TINYINT NULL,
  event_id CHAR(36) NOT NULL,
  PRIMARY KEY (device_id, sensor_id, recorded_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The version of the tables above. A database made by an older version (other keys or
-- columns) is emptied and rebuilt from the log files at start-up (AUTO_APPLY_SCHEMA=true)
-- or by `tlink-push replay`.
CREATE TABLE IF NOT EXISTS schema_info (
  name VARCHAR(32) NOT NULL PRIMARY KEY,
  version INT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
