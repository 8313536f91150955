package local.hapi;


import java.nio.file.Path;
import java.util.Locale;

/**
 * All runtime settings of the local server, read once from environment variables
 * (a JVM system property with the same name wins, which is handy for debugging:
 * {@code java -DHAPI_PORT=9090 -jar ...}).
 */
public final class Env {

	private Env() {}

	public static String get(String theName, String theDefault) {
		String value = System.getProperty(theName);
		if (value == null || value.isBlank()) {
			value = System.getenv(theName);
		}
		return (value == null || value.isBlank()) ? theDefault : value.trim();
	}

	public static int getInt(String theName, int theDefault) {
		String value = get(theName, null);
		if (value == null) {
			return theDefault;
		}
		try {
			return Integer.parseInt(value);
		} catch (NumberFormatException e) {
			throw new IllegalArgumentException("Environment variable " + theName + " must be an integer, got: " + value);
		}
	}

	public static boolean getBool(String theName, boolean theDefault) {
		String value = get(theName, null);
		if (value == null) {
			return theDefault;
		}
		switch (value.toLowerCase(Locale.ROOT)) {
			case "true", "1", "yes", "on" -> {
				return true;
			}
			case "false", "0", "no", "off" -> {
				return false;
			}
			default -> throw new IllegalArgumentException(
					"Environment variable " + theName + " must be true/false, got: " + value);
		}
	}

	/** TCP port of the embedded Tomcat. */
	public static int port() {
		return getInt("HAPI_PORT", 8080);
	}

	/** Interface to bind to; loopback by default since the server has no authentication. */
	public static String bindAddress() {
		return get("HAPI_BIND_ADDRESS", "127.0.0.1");
	}

	/** Directory holding the H2 database files (only used when HAPI_JDBC_URL is not set). */
	public static Path dataDir() {
		return Path.of(get("HAPI_DATA_DIR", "target/data")).toAbsolutePath().normalize();
	}

	public static String jdbcUrl() {
		String url = get("HAPI_JDBC_URL", null);
		if (url == null) {
			// DB_CLOSE_ON_EXIT=FALSE: let Spring close the pool on shutdown instead of H2's own JVM hook
			url = "jdbc:h2:file:" + dataDir().resolve("hapi") + ";DB_CLOSE_ON_EXIT=FALSE";
		}
		return url;
	}

	public static boolean isPostgres() {
		return jdbcUrl().startsWith("jdbc:postgresql:");
	}

	public static String jdbcUser() {
		return get("HAPI_JDBC_USER", isPostgres() ? "postgres" : "sa");
	}

	public static String jdbcPassword() {
		return get("HAPI_JDBC_PASSWORD", "");
	}

	/** Directory (containing package/package.json) or .tgz file of a FHIR NPM package to install at start. */
	public static Path igDir() {
		return Path.of(get("HAPI_IG_DIR", "../../profiles")).toAbsolutePath().normalize();
	}

	public static boolean validateRequests() {
		return getBool("HAPI_VALIDATE_REQUESTS", false);
	}

	public static String clientIdStrategy() {
		return get("HAPI_CLIENT_ID_STRATEGY", "ANY").toUpperCase(Locale.ROOT);
	}

	public static int defaultPageSize() {
		return getInt("HAPI_DEFAULT_PAGE_SIZE", 20);
	}

	public static int maxPageSize() {
		return getInt("HAPI_MAX_PAGE_SIZE", 1000);
	}
}
