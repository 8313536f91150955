package local.hapi;

import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.provider.ValueSetOperationProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.narrative2.NullNarrativeGenerator;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.ETagSupportEnum;
import ca.uhn.fhir.rest.server.HardcodedServerAddressStrategy;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.interceptor.LoggingInterceptor;
import ca.uhn.fhir.rest.server.interceptor.RequestValidatingInterceptor;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import ca.uhn.fhir.validation.IInstanceValidatorModule;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.ObjectProvider;
import org.springframework.beans.factory.annotation.Qualifier;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/**
 * The FHIR REST layer: a plain HAPI {@link RestfulServer} servlet mounted at /fhir/*.
 */
@Configuration
public class RestServerConfig {

	private static final Logger ourLog = LoggerFactory.getLogger(RestServerConfig.class);

	@Bean
	public RestfulServer restfulServer(
			IFhirSystemDao<?, ?> theSystemDao,
			@Qualifier("myResourceProvidersR4") ResourceProviderFactory theResourceProviders,
			@Qualifier("mySystemProviderR4") JpaSystemProvider<?, ?> theSystemProvider,
			ValueSetOperationProvider theValueSetOperationProvider,
			DatabaseBackedPagingProvider thePagingProvider,
			JpaStorageSettings theStorageSettings,
			ISearchParamRegistry theSearchParamRegistry,
			IValidationSupport theValidationSupport,
			@Qualifier("myInstanceValidator") ObjectProvider<IInstanceValidatorModule> theInstanceValidator) {

		RestfulServer server = new RestfulServer(theSystemDao.getContext());
		// No narrative generation on write: faster, and the stored resource is what the client sent
		server.getFhirContext().setNarrativeGenerator(new NullNarrativeGenerator());

		// One provider per resource type (read/vread/search/create/update/patch/delete/_history/$validate...)
		server.registerProviders(theResourceProviders.createProviders());
		// transaction / batch, system _history, $expunge, $meta ...
		server.registerProvider(theSystemProvider);
		// ValueSet/$expand, $validate-code, CodeSystem/$lookup
		server.registerProvider(theValueSetOperationProvider);

		JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
				server, theSystemDao, theStorageSettings, theSearchParamRegistry, theValidationSupport);
		capabilities.setImplementationDescription("HAPI FHIR R4 JPA server (local)");
		server.setServerConformanceProvider(capabilities);

		// default page size 20, max 1000 (HAPI_DEFAULT_PAGE_SIZE / HAPI_MAX_PAGE_SIZE)
		server.setPagingProvider(thePagingProvider);

		server.setETagSupport(ETagSupportEnum.ENABLED);
		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		server.setDefaultPrettyPrint(false);

		String serverAddress = Env.get("HAPI_SERVER_ADDRESS", null);
		if (serverAddress != null) {
			server.setServerAddressStrategy(new HardcodedServerAddressStrategy(serverAddress));
		} else {
			server.setServerAddressStrategy(new IncomingRequestAddressStrategy());
		}

		// One line per request in target/hapi.log (logger "fhir.access")
		LoggingInterceptor access = new LoggingInterceptor();
		access.setLoggerName("fhir.access");
		access.setMessageFormat("${requestVerb} ${requestUrl} -> ${operationType} ${idOrResourceName} "
				+ "(${processingTimeMillis} ms)");
		access.setErrorMessageFormat("ERROR ${requestVerb} ${requestUrl} -> ${exceptionMessage}");
		access.setLogExceptions(true);
		server.registerInterceptor(access);

		if (Env.validateRequests()) {
			RequestValidatingInterceptor validating = new RequestValidatingInterceptor();
			validating.addValidatorModule(theInstanceValidator.getObject());
			validating.setFailOnSeverity(ResultSeverityEnum.ERROR);
			// keep response headers small; the OperationOutcome is in the 422 body on failure
			validating.setAddResponseHeaderOnSeverity(null);
			server.registerInterceptor(validating);
			ourLog.info("Request validation is ON (fails on severity ERROR)");
		}
		return server;
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer theRestfulServer) {
		ServletRegistrationBean<RestfulServer> reg = new ServletRegistrationBean<>(theRestfulServer, "/fhir/*");
		reg.setName("fhir");
		reg.setLoadOnStartup(1);
		return reg;
	}
}
