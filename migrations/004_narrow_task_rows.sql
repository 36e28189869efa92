-- Keep the task rows narrow: a record longer than 128 bytes (every real one, ~1-2 KB) is compressed
-- and kept out of line in the table's TOAST storage, so the heap holds only the id, the filter
-- columns and a pointer. Counting and filtering (a status, a prompt text) then read a few MB per
-- 100k tasks instead of every whole record; a page fetches the 50 records it shows.
ALTER TABLE tasks SET (toast_tuple_target = 128);
