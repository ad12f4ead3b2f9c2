-- The two roles and the database a Campus deployment on PostgreSQL needs
-- (docs/operations.md, "PostgreSQL"). Idempotent: run it again safely.
--
--   psql -v owner_password="'…'" -v app_password="'…'" -v database=campus -f deploy/postgres/init.sql
--
-- The owner role owns the database, the schemas and the tables, creates
-- tenant roles and databases, and runs migrations; the serving role runs
-- every tenant request and owns nothing (`campus doctor` checks both).

\set ON_ERROR_STOP on
\if :{?database}
\else
  \set database campus
\endif
\if :{?owner_role}
\else
  \set owner_role campus_owner
\endif
\if :{?app_role}
\else
  \set app_role campus_app
\endif
\if :{?owner_password}
\else
  \set owner_password NULL
\endif
\if :{?app_password}
\else
  \set app_password NULL
\endif

SELECT format('CREATE ROLE %I LOGIN CREATEROLE CREATEDB PASSWORD %s', :'owner_role', :'owner_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner_role') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEROLE CREATEDB NOSUPERUSER NOBYPASSRLS', :'owner_role') \gexec

SELECT format('CREATE ROLE %I LOGIN NOINHERIT PASSWORD %s', :'app_role', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_role') \gexec
SELECT format('ALTER ROLE %I LOGIN NOINHERIT NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB', :'app_role') \gexec

SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'owner_role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'database') \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', :'database', :'app_role') \gexec
