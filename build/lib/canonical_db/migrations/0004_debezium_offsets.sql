-- Where the embedded Debezium engine keeps its source offsets (JdbcOffsetBackingStore), beside
-- the data it describes. Created here because the store's own "create if missing" check does
-- not understand schema-qualified names; the engine connects with currentSchema=sync.
create table if not exists sync.debezium_offsets (
    id                varchar(36) not null primary key,
    offset_key        varchar(1255),
    offset_val        varchar(1255),
    record_insert_ts  timestamp not null,
    record_insert_seq integer not null
);
