-- fedstream: the auditor's saved queries, over the views without blobs (updates_audit, rejected_updates_audit,
-- model_versions_audit, client_keys_audit) that the job creates beside its tables.
--
-- Choose the catalog and schema first: in the SQL editor with its catalog and schema pickers, in a notebook with
--   USE CATALOG fedstream
--   USE SCHEMA federated
-- Parameters (:model_name, :version, :client_id) become input fields in the SQL editor.
-- The auditors' group needs only USE CATALOG, USE SCHEMA and SELECT on the four views (`fedstream databricks grants`).

-- 1. Lineage of a version: which updates made it, with the weight and staleness each got, and where each came from.
WITH used AS (
  SELECT model_name, version, parent_version, parameter_hash, created_at,
         posexplode(update_ids) AS (position, update_id), update_weights, update_staleness
  FROM model_versions_audit
  WHERE model_name = :model_name AND version = :version
)
SELECT used.version, used.parent_version, used.parameter_hash, used.position,
       used.update_weights[used.position] AS weight, used.update_staleness[used.position] AS staleness,
       u.update_id, u.client_id, u.base_version, u.sample_count, u.payload_sha256,
       u.kafka_topic, u.kafka_partition, u.kafka_offset, u.client_created_at, u.received_at
FROM used
JOIN updates_audit AS u ON u.update_id = used.update_id AND u.model_name = used.model_name
ORDER BY used.position;

-- 2. The chain of versions back to version 0: a broken chain shows as parent_hash_matches = false.
SELECT v.version, v.parent_version, v.parameter_hash, v.parent_parameter_hash,
       p.parameter_hash = v.parent_parameter_hash AS parent_hash_matches,
       size(v.update_ids) AS update_count, v.staleness_mean, v.staleness_max,
       v.aggregation_mode, v.server_optimizer, v.epsilon, v.epsilon_assumption, v.privacy_budget_exhausted,
       v.created_at
FROM model_versions_audit AS v
LEFT JOIN model_versions_audit AS p ON p.model_name = v.model_name AND p.version = v.parent_version
WHERE v.model_name = :model_name
ORDER BY v.version DESC;

-- 3. Rejected messages by reason and hour, the last 7 days.
SELECT date_trunc('HOUR', rejected_at) AS hour, reason, count(*) AS rejected,
       count(DISTINCT client_id) AS clients, max(raw_size) AS largest_bytes
FROM rejected_updates_audit
WHERE rejected_at >= current_timestamp() - INTERVAL 7 DAYS
GROUP BY ALL
ORDER BY hour DESC, rejected DESC;

-- 4. One client's accepted updates and the version each went into, with its weight and staleness.
WITH used AS (
  SELECT model_name, version, posexplode(update_ids) AS (position, update_id), update_weights, update_staleness
  FROM model_versions_audit
)
SELECT u.update_id, u.model_name, u.base_version, u.sample_count, u.received_at,
       used.version AS used_in_version,
       used.update_weights[used.position] AS weight, used.update_staleness[used.position] AS staleness
FROM updates_audit AS u
LEFT JOIN used ON used.update_id = u.update_id AND used.model_name = u.model_name
WHERE u.client_id = :client_id
ORDER BY u.received_at DESC;

-- 5. One client's rejected messages by reason.
SELECT reason, count(*) AS rejected, max(rejected_at) AS last_rejected
FROM rejected_updates_audit
WHERE client_id = :client_id
GROUP BY reason
ORDER BY rejected DESC;

-- 6. Every client's contribution to one model.
WITH used AS (
  SELECT model_name, version, posexplode(update_ids) AS (position, update_id), update_weights
  FROM model_versions_audit
  WHERE model_name = :model_name
)
SELECT u.client_id, count(*) AS accepted, count(used.version) AS used_in_versions,
       sum(u.sample_count) AS samples, round(sum(used.update_weights[used.position]), 4) AS total_weight,
       min(u.received_at) AS first_update, max(u.received_at) AS last_update
FROM updates_audit AS u
LEFT JOIN used ON used.update_id = u.update_id
WHERE u.model_name = :model_name
GROUP BY u.client_id
ORDER BY total_weight DESC NULLS LAST;

-- 7. Which keys were trusted when: every enrolment and revocation.
SELECT client_id, action, recorded_at, public_key_sha256
FROM client_keys_audit
ORDER BY recorded_at DESC;
