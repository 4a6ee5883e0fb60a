-- _audit_stream_ensure_partitions(table): create the partitions of a partitioned history table
-- ahead of its id sequence, as the table's owner (audit_stream.partitions.ahead.ensure_function).
--
-- Loaded by audit_stream.partitions.ahead, which replaces these names in braces (each once known,
-- never a caller's value): {function} the function's qualified name, {search_path} its pinned
-- search_path, {schema} audit_stream's schema as a quoted literal, {layout_pattern} the regular
-- expression of the layout comment the owner records on the table (size, ahead), {full_before}
-- the prefix of the comment that marks a partition the sequence has passed, {partition_counts} the
-- qualified table of the partitions' counts (audit_stream.partitions.counts) and
-- {unknown_slot}, {all_contexts} the slot and context of its row that says "not counted".

CREATE OR REPLACE FUNCTION {function}(_table text)
RETURNS text[] LANGUAGE plpgsql
SECURITY DEFINER SET search_path = {search_path}
AS $$
DECLARE
    _parent regclass := to_regclass(format('%I.%I', {schema}, _table));
    _column text;
    _layout text[];
    _size bigint;
    _ahead int;
    _next bigint;
    _end bigint;
    _default text;
    _name text;
    _moved boolean;
    _created text[] := '{}';
    _passed text;
    _unique record;
    _suffix text;
    -- The partitions' counts exist (migration 0039 on; this function is installed earlier).
    _counted boolean := to_regclass('{partition_counts}') IS NOT NULL;
BEGIN
    -- A range-partitioned table of this schema, on one column, with a recorded layout.
    SELECT a.attname INTO _column
    FROM pg_catalog.pg_partitioned_table AS pt
    JOIN pg_catalog.pg_attribute AS a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = _parent AND pt.partstrat = 'r' AND pt.partnatts = 1;
    _layout := regexp_match(obj_description(_parent, 'pg_class'), '^{layout_pattern}((; unique \([^)]*\))*)$');
    IF _column IS NULL OR _layout IS NULL THEN
        RAISE EXCEPTION 'audit_stream: "%" is not a partitioned history table', _table
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Declare it in AUDIT_STREAM["PARTITIONS"] and run migrate as the owner.';
    END IF;
    _size := _layout[1]::bigint;
    _ahead := _layout[2]::int;

    -- The id the column's sequence hands out next (not drawing it).
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM %s',
                   pg_get_serial_sequence(_parent::text, _column))
        INTO _next;

    -- The end of the highest range, and the default partition. Bounds are read
    -- from PostgreSQL's own text: FOR VALUES FROM ('1') TO ('1001').
    SELECT max(substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''(-?\d+)''\)')::bigint)
    INTO _end
    FROM pg_catalog.pg_inherits AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = _parent;
    _end := coalesce(_end, (_next / _size) * _size);
    SELECT c.relname INTO _default
    FROM pg_catalog.pg_inherits AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = _parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';

    WHILE _end < _next + _ahead * _size LOOP
        _name := _table || '_p' || _end;
        _moved := false;
        IF _default IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE %I >= $1 AND %I < $2)',
                           {schema}, _default, _column, _column)
                INTO _moved USING _end, _end + _size;
        END IF;
        IF _moved THEN
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %I.%I', _parent, {schema}, _default);
        END IF;
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%s) TO (%s)',
                       {schema}, _name, _parent, _end, _end + _size);
        -- A new partition is counted from nothing (a former table of that name left its counts).
        IF _counted THEN
            DELETE FROM {partition_counts} WHERE partition = _name;
        END IF;
        -- Unique keys that a partitioned table cannot hold (they lack the partition
        -- key) are kept as a unique index of each partition (Layout.local_unique).
        FOR _unique IN
            SELECT u.m[1] AS columns, u.n FROM regexp_matches(_layout[3], 'unique \(([^)]*)\)', 'g')
                WITH ORDINALITY AS u (m, n)
        LOOP
            _suffix := '_unique' || CASE WHEN _unique.n = 1 THEN '' ELSE (_unique.n - 1)::text END;
            EXECUTE format('CREATE UNIQUE INDEX %I ON %I.%I (%s)',
                           left(_name, 63 - length(_suffix)) || _suffix, {schema}, _name,
                           (SELECT string_agg(quote_ident(btrim(c)), ', ')
                            FROM unnest(string_to_array(_unique.columns, ',')) AS c));
        END LOOP;
        IF _moved THEN
            EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I WHERE %I >= $1 AND %I < $2',
                           {schema}, _name, {schema}, _default, _column, _column)
                USING _end, _end + _size;
            EXECUTE format('DELETE FROM %I.%I WHERE %I >= $1 AND %I < $2',
                           {schema}, _default, _column, _column)
                USING _end, _end + _size;
            -- Rows folded in the default partition were counted there: a drop reads this one.
            IF _counted THEN
                INSERT INTO {partition_counts} (partition, filenode, slot, context_id, events)
                VALUES (_name, 0, {unknown_slot}, {all_contexts}, 0);
            END IF;
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I DEFAULT', _parent, {schema}, _default);
        END IF;
        _created := _created || _name;
        _end := _end + _size;
    END LOOP;

    -- Partitions the sequence has passed, not yet marked: every row in one was
    -- created before now (a row's time is its transaction's start, before its id).
    FOR _passed IN
        SELECT c.relname
        FROM pg_catalog.pg_inherits AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = _parent
          AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''(-?\d+)''\)')::bigint <= _next
          AND coalesce(obj_description(c.oid, 'pg_class'), '') NOT LIKE '{full_before}%'
    LOOP
        EXECUTE format('COMMENT ON TABLE %I.%I IS %L', {schema}, _passed,
                       '{full_before}' || (to_json(now()) #>> '{}'));
    END LOOP;
    RETURN _created;
END;
$$;
REVOKE EXECUTE ON FUNCTION {function}(text) FROM PUBLIC;
