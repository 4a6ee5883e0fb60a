-- docker-compose's PostgreSQL: the two roles of a tamper-proof deployment (README, "Deployment").
-- shop_owner runs the migrations and owns every table and function audit_stream installs;
-- shop_app is what web, worker, listener, beat and traffic connect as: it gets its privileges
-- from `manage.py audit_stream_grants shop_app --apply`, run by the migrate service.
CREATE ROLE shop_owner LOGIN;
CREATE ROLE shop_app LOGIN;
ALTER DATABASE audit_stream_demo OWNER TO shop_owner;
\connect audit_stream_demo
ALTER SCHEMA public OWNER TO shop_owner;
