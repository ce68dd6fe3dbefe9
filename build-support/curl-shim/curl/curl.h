/* Empty on purpose. librdkafka 2.12 includes <curl/curl.h> in rdkafka_conf.c under
 * `#ifdef WITH_OAUTHBEARER_OIDC`, which CMake always defines (as 0), so a build without
 * curl still looks for the header (librdkafka issue #5135). Tally builds librdkafka without
 * curl: nothing from this header is used. .cargo/config.toml puts this folder on
 * C_INCLUDE_PATH so no system curl headers are needed. */
