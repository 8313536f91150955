package local.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.IDaoRegistry;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.binary.api.IBinaryStorageSvc;
import ca.uhn.fhir.jpa.binstore.DatabaseBinaryContentStorageSvcImpl;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.config.util.ResourceCountCacheUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirPostgresDialect;
import ca.uhn.fhir.jpa.provider.DaoRegistryResourceSupportedSvc;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.search.IStaleSearchDeletingSvc;
import ca.uhn.fhir.jpa.search.StaleSearchDeletingSvcImpl;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.util.ResourceCountCache;
import ca.uhn.fhir.rest.api.IResourceSupportedSvc;
import ca.uhn.fhir.rest.api.SearchTotalModeEnum;
import jakarta.persistence.EntityManagerFactory;
import org.apache.commons.dbcp2.BasicDataSource;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Lazy;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.time.Duration;
import java.util.Locale;
import java.util.Properties;
import javax.sql.DataSource;

/**
 * Persistence side of the server: data source, Hibernate, and the HAPI JPA storage settings.
 * <p>
 * The HAPI building blocks imported here are the same ones HAPI's own R4 test configuration and the
 * jpaserver-starter use: the R4 DAOs/resource providers ({@link JpaR4Config}) and the Batch2 job framework
 * (needed by DELETE ?_expunge=true, $reindex and package installation). Subscriptions, MDM, CR, IPS,
 * GraphQL, bulk import etc. are simply not wired into the REST server.
 * <p>
 * The few beans HAPI's {@code HapiJpaConfig} would add are declared here instead, minus its
 * {@code FulltextSearchSvcImpl}: Hibernate Search (Lucene/Elasticsearch) is off, and HAPI only falls back
 * to its database-only code paths (e.g. ValueSet $expand of stored CodeSystems) when there is no
 * IFulltextSearchSvc bean at all.
 */
@Configuration
@EnableTransactionManagement
@Import({
	JpaR4Config.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	// in-memory message channels; Batch2 uses them to hand out work chunks
	SubscriptionChannelConfig.class,
	ThreadPoolFactoryConfig.class
})
public class JpaServerConfig {

	private static final Logger ourLog = LoggerFactory.getLogger(JpaServerConfig.class);

	@Bean(destroyMethod = "close")
	public BasicDataSource dataSource() {
		String url = Env.jdbcUrl();
		BasicDataSource ds = new BasicDataSource();
		if (Env.isPostgres()) {
			ds.setDriverClassName("org.postgresql.Driver");
		} else if (url.startsWith("jdbc:h2:")) {
			ds.setDriverClassName("org.h2.Driver");
			if (url.startsWith("jdbc:h2:file:") && Env.get("HAPI_JDBC_URL", null) == null) {
				try {
					Files.createDirectories(Env.dataDir());
				} catch (IOException e) {
					throw new UncheckedIOException("Cannot create data directory " + Env.dataDir(), e);
				}
			}
		} else {
			throw new IllegalArgumentException("Unsupported HAPI_JDBC_URL (only jdbc:h2: and jdbc:postgresql:): " + url);
		}
		ds.setUrl(url);
		ds.setUsername(Env.jdbcUser());
		ds.setPassword(Env.jdbcPassword());
		ds.setMaxTotal(Env.getInt("HAPI_DB_POOL_SIZE", 10));
		ds.setMaxWait(Duration.ofSeconds(30));
		ourLog.info("Database: {} (user {})", url, Env.jdbcUser());
		return ds;
	}

	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory theBeanFactory,
			FhirContext theFhirContext,
			JpaStorageSettings theStorageSettings,
			DataSource theDataSource) {
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(theBeanFactory, theFhirContext, theStorageSettings);
		emf.setPersistenceUnitName("HAPI_LOCAL_PU");
		emf.setDataSource(theDataSource);
		emf.setJpaProperties(hibernateProperties());
		return emf;
	}

	private static Properties hibernateProperties() {
		Properties p = new Properties();
		p.put(
				"hibernate.dialect",
				Env.isPostgres() ? HapiFhirPostgresDialect.class.getName() : HapiFhirH2Dialect.class.getName());
		// Local dev/test server: let Hibernate create/extend the schema (same as HAPI's own tests and the starter)
		p.put("hibernate.hbm2ddl.auto", Env.get("HAPI_HBM2DDL", "update"));
		p.put("hibernate.format_sql", "false");
		p.put("hibernate.show_sql", "false");
		p.put("hibernate.jdbc.batch_size", "20");
		p.put("hibernate.cache.use_query_cache", "false");
		p.put("hibernate.cache.use_second_level_cache", "false");
		p.put("hibernate.cache.use_structured_entries", "false");
		p.put("hibernate.cache.use_minimal_puts", "false");
		// No Lucene / Elasticsearch: all searches go through the SQL indexes
		p.put("hibernate.search.enabled", "false");
		return p;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory theEntityManagerFactory) {
		JpaTransactionManager tm = new JpaTransactionManager();
		tm.setEntityManagerFactory(theEntityManagerFactory);
		return tm;
	}

	@Bean
	public JpaStorageSettings storageSettings() {
		JpaStorageSettings s = new JpaStorageSettings();

		// Client-assigned ids: ANY allows purely numeric ids too (PUT Patient/123). HAPI then
		// recommends UUIDs for server-assigned ids so the two can never collide.
		JpaStorageSettings.ClientIdStrategyEnum clientIds =
				JpaStorageSettings.ClientIdStrategyEnum.valueOf(Env.clientIdStrategy());
		s.setResourceClientIdStrategy(clientIds);
		String serverIds = Env.get(
				"HAPI_SERVER_ID_STRATEGY",
				clientIds == JpaStorageSettings.ClientIdStrategyEnum.ANY ? "UUID" : "SEQUENTIAL_NUMERIC");
		s.setResourceServerIdStrategy(
				JpaStorageSettings.IdStrategyEnum.valueOf(serverIds.toUpperCase(Locale.ROOT)));

		s.setAllowExternalReferences(true);
		s.setAllowMultipleDelete(true);
		s.setExpungeEnabled(true);
		s.setDeleteExpungeEnabled(true);
		s.setAllowContainsSearches(true);

		// Bundle.total is always filled (an extra COUNT query per search; fine for a dev server)
		s.setDefaultTotalMode(SearchTotalModeEnum.ACCURATE);
		// Never serve a cached result list for a repeated search: tests expect read-your-writes
		s.setReuseCachedSearchResultsForMillis(null);
		s.setFetchSizeDefaultMaximum(Env.maxPageSize());

		// Nothing to do in the background that a test server needs
		s.setEnableTaskBulkExportJobExecution(false);
		s.setEnableTaskBulkImportJobExecution(false);
		s.setEnableTaskPreExpandValueSets(false);
		return s;
	}

	/** Search results are stored in the database; further pages are fetched with ?_getpages=&lt;search uuid&gt; */
	@Bean
	public DatabaseBackedPagingProvider databaseBackedPagingProvider() {
		DatabaseBackedPagingProvider provider = new DatabaseBackedPagingProvider();
		provider.setDefaultPageSize(Env.defaultPageSize());
		provider.setMaximumPageSize(Env.maxPageSize());
		return provider;
	}

	@Bean
	public IStaleSearchDeletingSvc staleSearchDeletingSvc() {
		return new StaleSearchDeletingSvcImpl();
	}

	@Bean
	public IResourceSupportedSvc resourceSupportedSvc(IDaoRegistry theDaoRegistry) {
		return new DaoRegistryResourceSupportedSvc(theDaoRegistry);
	}

	/** Resource counts shown in the CapabilityStatement (refreshed in the background) */
	@Bean(name = "myResourceCountsCache")
	public ResourceCountCache resourceCountsCache(IFhirSystemDao<?, ?> theSystemDao) {
		return ResourceCountCacheUtil.newResourceCountCache(theSystemDao);
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		// No subscription channel types enabled
		return new SubscriptionSettings();
	}

	@Lazy
	@Bean
	public IBinaryStorageSvc binaryStorageSvc() {
		return new DatabaseBinaryContentStorageSvcImpl();
	}
}
